import { regionsync } from './plugin.js'

export default regionsync
export { regionsync }
export type { RegionsyncDecorator } from './plugin.js'
export type { RegionsyncPluginOptions, RegionsyncRouteConfig, ResourceKeyFn, ResourceRef } from './options.js'
export {
  CREDENTIAL_HEADERS, DEFAULT_CREATED_ID, DEFAULT_IDENTITY, DEFAULT_PUBLISH_TIMEOUT_MS, EVENT_ENVELOPE_RESERVE_BYTES
} from './options.js'
export { BodyTooLargeError, PublishError } from './errors.js'
