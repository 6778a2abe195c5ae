import createError from '@fastify/error'
import { ErrorCode, RegionsyncError } from '@regionsync/shared'

// The plugin's refusals are Fastify errors (`@fastify/error`): thrown from a hook, they reach the
// app's own error handler, and Fastify's default one answers `{ statusCode, code, error, message }`.

/** The request body is larger than an event can carry; the write is refused before it runs (413). */
export class BodyTooLargeError extends createError<typeof ErrorCode.BodyTooLarge, 413, [string, number]>(
  ErrorCode.BodyTooLarge,
  "request body%s is over regionsync's limit of %d bytes (what one event can carry to the other regions); the write was refused before it ran",
  413) {
  constructor (bytes: number | null, limit: number) {
    super(bytes === null ? '' : ` of ${bytes} bytes`, limit)
    this.name = 'BodyTooLargeError'
  }
}

/**
 * The plugin cannot take a write, or check a replay, now: nothing was changed, and the request may
 * be sent again after its Retry-After (503).
 */
export const UnavailableError = createError<typeof ErrorCode.Unavailable, 503, [string]>(ErrorCode.Unavailable, '%s', 503)

/**
 * The handler committed the write but its event could not be queued for the other regions, so
 * the write is not acknowledged (503); `cause` says why.
 */
export const NotQueuedError = createError<typeof ErrorCode.Publish, 503, [string, { cause: unknown }]>(ErrorCode.Publish, '%s', 503)

/** The target's plugin is applying the same replay in another request (409). */
export const ReplayInProgressError = createError<typeof ErrorCode.ReplayInProgress, 409, [string]>(ErrorCode.ReplayInProgress, '%s', 409)

/** The target's plugin already has a replay with this Idempotency-Key and another body (422). */
export const ReplayBodyMismatchError = createError<typeof ErrorCode.ReplayBodyMismatch, 422, [string]>(ErrorCode.ReplayBodyMismatch, '%s', 422)

/** JetStream did not acknowledge an event in time. */
export class PublishError extends RegionsyncError {
  constructor (message: string, options?: { cause?: unknown }) {
    super(ErrorCode.Publish, message, options)
    this.name = 'PublishError'
  }
}
