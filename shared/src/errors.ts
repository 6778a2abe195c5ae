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
  VerifyRead: 'REGIONSYNC_E_VERIFY_READ',
  /** The plugin cannot take a write or check a replay now; nothing was changed; retry after Retry-After. */
  Unavailable: 'REGIONSYNC_E_UNAVAILABLE',
  /** A KV bucket (applied log, identities, ownership, replay guard) did not answer or refused a write. */
  KvUnreachable: 'REGIONSYNC_E_KV_UNREACHABLE',
  /** An event's sealed body or forwarded headers cannot be opened with this process's key. */
  Undecryptable: 'REGIONSYNC_E_UNDECRYPTABLE',
  /** The target did not answer a replay: refused, reset or timed out. */
  TargetUnreachable: 'REGIONSYNC_E_TARGET_UNREACHABLE',
  /** The target's plugin is applying the same replay in another request. */
  ReplayInProgress: 'REGIONSYNC_E_REPLAY_IN_PROGRESS',
  /** The target's plugin already has a replay with this Idempotency-Key and another body. */
  ReplayBodyMismatch: 'REGIONSYNC_E_REPLAY_BODY_MISMATCH'
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

/** An event's sealed body or forwarded headers cannot be opened: no key, or another key. */
export class UndecryptableError extends RegionsyncError {
  constructor (message: string, options?: { cause?: unknown }) {
    super(ErrorCode.Undecryptable, message, options)
    this.name = 'UndecryptableError'
  }
}

/** The target gave no answer to a replay; `cause` is the transport's error. */
export class TargetUnreachableError extends RegionsyncError {
  constructor (message: string, options?: { cause?: unknown }) {
    super(ErrorCode.TargetUnreachable, message, options)
    this.name = 'TargetUnreachableError'
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

/**
 * The `code` Node, undici or nats.js put on an error of theirs (`ECONNREFUSED`, `UND_ERR_HEADERS_TIMEOUT`,
 * ...); undefined when it has none.
 */
export function errorCodeOf (err: unknown): string | undefined {
  return err instanceof Error && 'code' in err && typeof err.code === 'string' ? err.code : undefined
}
