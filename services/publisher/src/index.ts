import { regionsync } from './plugin.js'

export default regionsync
export { regionsync }
export { FASTIFY_RANGE } from './plugin.js'
export type { RegionsyncDecorator, RegionsyncPlugin, RegionsyncReplay } from './plugin.js'
export type { RegionsyncPluginOptions, RegionsyncRouteConfig, ResourceKeyFn, ResourceRef, RouteRule } from './options.js'
export type { PlanRow } from './plan.js'
export { REPLAY_OUTCOME_HEADER } from './replay-handling.js'
export { CLAIM_ABANDONED_MS, MAX_RECORDED_BODY_BYTES } from './replay-guard.js'
export {
  CREDENTIAL_HEADERS, DEFAULT_CREATED_ID, DEFAULT_IDENTITY, DEFAULT_PUBLISH_TIMEOUT_MS, EVENT_ENVELOPE_RESERVE_BYTES
} from './options.js'
export { BodyTooLargeError, NotQueuedError, PublishError, ReplayBodyMismatchError, ReplayInProgressError, UnavailableError } from './errors.js'
