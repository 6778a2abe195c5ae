/**
 * Every error regionsync raises carries a stable `code`; callers branch on the code, never on the
 * message. `cause` keeps the underlying error.
 */
export const ErrorCode = {
  InvalidOption: 'REGIONSYNC_E_INVALID_OPTION',
  MalformedEvent: 'REGIONSYNC_E_MALFORMED_EVENT',
  BadSignature: 'REGIONSYNC_E_BAD_SIGNATURE',
  BadPath: 'REGIONSYNC_E_BAD_PATH',
  StreamMismatch: 'REGIONSYNC_E_STREAM_MISMATCH',
  UnsupportedServer: 'REGIONSYNC_E_UNSUPPORTED_SERVER',
  Publish: 'REGIONSYNC_E_PUBLISH',
  BodyTooLarge: 'REGIONSYNC_E_BODY_TOO_LARGE',
  Closed: 'REGIONSYNC_E_CLOSED',
  VerifyRead: 'REGIONSYNC_E_VERIFY_READ'
} as const
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode]

export class RegionsyncError extends Error {
  readonly code: ErrorCode
  constructor (code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'RegionsyncError'
    this.code = code
  }
}

/** A configuration value is missing or malformed; the message names the option and what it expects. */
export class InvalidOptionError extends RegionsyncError {
  readonly option: string
  constructor (option: string, expected: string, options?: { cause?: unknown }) {
    super(ErrorCode.InvalidOption, `${option}: ${expected}`, options)
    this.name = 'InvalidOptionError'
    this.option = option
  }
}

/** An event could not be decoded: bad JSON, unknown version or a missing or mistyped field. */
export class MalformedEventError extends RegionsyncError {
  constructor (message: string, options?: { cause?: unknown }) {
    super(ErrorCode.MalformedEvent, message, options)
    this.name = 'MalformedEventError'
  }
}

export class BadSignatureError extends RegionsyncError {
  constructor (message: string) {
    super(ErrorCode.BadSignature, message)
    this.name = 'BadSignatureError'
  }
}

/** An event's path would leave the target's origin or base path. */
export class BadPathError extends RegionsyncError {
  constructor (message: string) {
    super(ErrorCode.BadPath, message)
    this.name = 'BadPathError'
  }
}

/**
 * `regionsync verify` could not read a region: a read endpoint failed, answered something that is
 * not a page of resources, or broke the order the comparison depends on.
 */
export class VerifyReadError extends RegionsyncError {
  readonly region: string
  constructor (region: string, message: string, options?: { cause?: unknown }) {
    super(ErrorCode.VerifyRead, `region ${region}: ${message}`, options)
    this.name = 'VerifyReadError'
    this.region = region
  }
}

export function isRegionsyncError (err: unknown, code?: ErrorCode): err is RegionsyncError {
  return err instanceof RegionsyncError && (code === undefined || err.code === code)
}
