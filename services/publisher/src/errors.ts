import { ErrorCode, RegionsyncError } from '@regionsync/shared'

/** The request body is larger than an event can carry; the write is refused before it runs. */
export class BodyTooLargeError extends RegionsyncError {
  readonly statusCode = 413
  constructor (bytes: number | null, limit: number) {
    super(ErrorCode.BodyTooLarge,
      `request body${bytes === null ? '' : ` of ${bytes} bytes`} is over regionsync's limit of ${limit} bytes (what one event can carry to the other regions); the write was refused before it ran`)
    this.name = 'BodyTooLargeError'
  }
}

/** JetStream did not acknowledge an event in time. */
export class PublishError extends RegionsyncError {
  constructor (message: string, options?: { cause?: unknown }) {
    super(ErrorCode.Publish, message, options)
    this.name = 'PublishError'
  }
}
