import { isUtf8 } from 'node:buffer'
import { randomUUID } from 'node:crypto'
import { MalformedEventError } from './errors.js'
import { sealBytes } from './sealed-headers.js'
import { isTracestate, parseTraceparent, type EventTrace } from './trace-context.js'

/** The event format version this build writes and reads. */
export const EVENT_VERSION = 1

export const MUTATION_METHODS = ['POST', 'PUT', 'PATCH', 'DELETE'] as const
export type MutationMethod = (typeof MUTATION_METHODS)[number]

/** How the target learns the identifier the source assigned to a created resource (I8). */
export type IdentityMode = 'inject' | 'put' | 'translate'
export const IDENTITY_MODES: readonly IdentityMode[] = ['inject', 'put', 'translate']

export interface CreatedResource {
  /** The identifier the source assigned. */
  id: string
  /** Dotted path of the identifier in the create's response, reused in the replayed body. */
  field: string
  mode: IdentityMode
}

/** One successful mutation on the source API, as it travels through JetStream. */
export interface RegionsyncEvent {
  v: typeof EVENT_VERSION
  /** Unique id; also the `Nats-Msg-Id` and the replay's `Idempotency-Key`. */
  id: string
  /** Region whose API took the write. */
  origin: string
  /** When the source answered 2xx (ISO 8601). */
  committedAt: string
  method: MutationMethod
  /** Request path, always starting with one "/". */
  path: string
  /** Raw query string without "?", "" when none. */
  query: string
  contentType: string | null
  /** The request body exactly as it arrived; null when the request had none. */
  body: string | null
  /**
   * 'sealed': the body is encrypted (publisher option `sealBodies`, see sealed-body.ts) and only
   * `openEventBody` with the encryption key gives its bytes. An encoding rather than a field of its
   * own, so a replicator that predates it dead-letters the event as malformed instead of replaying
   * it without its body.
   */
  bodyEncoding: BodyEncoding
  /** Resource key: events with the same key are applied in order. */
  resource: string
  /** Non-credential headers the operator chose to carry, lower-case names. */
  headers: Record<string, string>
  /** Headers opted in with `forwardHeaders`, encrypted (see sealed-headers.ts); null when none. */
  sealedHeaders: string | null
  /**
   * Positions (in `path.split('/')`) of identifiers the target may know under its own ids, set on
   * routes whose identity mode is 'translate'; the replicator rewrites them (I8).
   */
  idSegments: number[]
  created: CreatedResource | null
  /**
   * Present (and true) only on an event `regionsync verify --repair` made: the source's state of a
   * resource that a region was found to differ on. Absent on every other event, so events written
   * before repairs existed, and readers built before them, are unaffected.
   */
  repair?: true
  /**
   * W3C trace context of the source request (or of the plugin's publish span under it), which the
   * replay is sent as a child of. Absent when the source request had none, so events without it
   * encode as before; readers that predate it ignore it.
   */
  trace?: EventTrace
}

export type BodyEncoding = 'utf8' | 'base64' | 'sealed'
const BODY_ENCODINGS: readonly BodyEncoding[] = ['utf8', 'base64', 'sealed']

/** Additional authenticated data of a sealed body: unlike sealed headers' (the bare event id), so neither blob can stand in for the other. */
export const sealedBodyAad = (eventId: string): string => `${eventId}\nbody`

export interface NewEventInput {
  origin: string
  method: MutationMethod
  path: string
  query?: string
  contentType?: string | null
  body?: Buffer | null
  resource: string
  headers?: Record<string, string>
  sealedHeaders?: string | null
  idSegments?: number[]
  created?: CreatedResource | null
  committedAt?: Date
  id?: string
  /** Encrypt the body with this AES-256-GCM key (bodyEncoding 'sealed'). */
  sealBodyWith?: Buffer
  repair?: boolean
  trace?: EventTrace | null
}

export function createEvent (input: NewEventInput): RegionsyncEvent {
  const body = input.body ?? null
  const id = input.id ?? randomUUID()
  if (body !== null && input.sealBodyWith !== undefined) {
    return withBody(fields(input, id), sealBytes(input.sealBodyWith, sealedBodyAad(id), body), 'sealed')
  }
  // Text travels as text unless JSON escaping would make it larger than base64: an event's size
  // must stay within 4/3 of the body's, which is what the publisher's body limit counts on.
  const utf8 = body === null || (isUtf8(body) && jsonEscapedLength(body) <= Math.ceil(body.length / 3) * 4)
  return withBody(fields(input, id), body === null ? null : body.toString(utf8 ? 'utf8' : 'base64'), utf8 ? 'utf8' : 'base64')
}

/**
 * The body's two fields added to the event, last, as they always were encoded. Added in place,
 * not by spreading the fields into a new object: V8 builds that in slow mode (about 10 us an
 * event in a micro-benchmark on Node 20).
 */
function withBody (event: Omit<RegionsyncEvent, 'body' | 'bodyEncoding'>, body: string | null, bodyEncoding: RegionsyncEvent['bodyEncoding']): RegionsyncEvent {
  const e = event as RegionsyncEvent
  e.body = body
  e.bodyEncoding = bodyEncoding
  return e
}

function fields (input: NewEventInput, id: string): Omit<RegionsyncEvent, 'body' | 'bodyEncoding'> {
  const event: Omit<RegionsyncEvent, 'body' | 'bodyEncoding'> = {
    v: EVENT_VERSION,
    id,
    origin: input.origin,
    committedAt: (input.committedAt ?? new Date()).toISOString(),
    method: input.method,
    path: input.path,
    query: input.query ?? '',
    contentType: input.contentType ?? null,
    resource: input.resource,
    headers: input.headers ?? {},
    sealedHeaders: input.sealedHeaders ?? null,
    idSegments: input.idSegments ?? [],
    created: input.created ?? null
  }
  // Set only when true, so every other event encodes exactly as before.
  if (input.repair === true) event.repair = true
  if (input.trace != null) event.trace = input.trace
  return event
}

/**
 * Bytes UTF-8 text takes inside a JSON string: `"` and `\\` and the short escapes (\b \t \n \f
 * \r) take two, other control characters six (\u00XX), everything else, multi-byte sequences
 * included, itself. One pass over the bytes, instead of stringifying the body to measure it.
 */
function jsonEscapedLength (body: Buffer): number {
  let n = body.length
  for (let i = 0; i < body.length; i++) {
    const b = body[i] as number
    if (b === 0x22 || b === 0x5c) n += 1
    else if (b < 0x20) n += (b === 0x08 || b === 0x09 || b === 0x0a || b === 0x0c || b === 0x0d) ? 1 : 5
  }
  return n
}

/** The request body as bytes, exactly as the client sent it. A sealed body needs `openEventBody` and the key. */
export function eventBody (event: RegionsyncEvent): Buffer | null {
  if (event.body === null) return null
  if (event.bodyEncoding === 'sealed') throw new MalformedEventError('the body is sealed; open it with openEventBody and the encryption key')
  return Buffer.from(event.body, event.bodyEncoding)
}

export function encodeEvent (event: RegionsyncEvent): Uint8Array {
  return Buffer.from(JSON.stringify(event))
}

/**
 * Decodes and validates an event. Every way it can be wrong raises a MalformedEventError naming
 * the field, so a dead letter says what to fix.
 */
export function decodeEvent (data: Uint8Array): RegionsyncEvent {
  let raw: unknown
  try {
    raw = JSON.parse(Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('utf8'))
  } catch (err) {
    throw new MalformedEventError('event is not valid JSON', { cause: err })
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new MalformedEventError('event is not a JSON object')
  }
  const e = raw as Record<string, unknown>
  if (e.v !== EVENT_VERSION) {
    throw new MalformedEventError(`unknown event version ${JSON.stringify(e.v)} (this build reads ${EVENT_VERSION})`)
  }
  str(e, 'id')
  str(e, 'origin')
  str(e, 'committedAt')
  if (Number.isNaN(Date.parse(e.committedAt as string))) throw new MalformedEventError('committedAt is not a date')
  if (!MUTATION_METHODS.includes(e.method as MutationMethod)) {
    throw new MalformedEventError(`method ${JSON.stringify(e.method)} is not one of ${MUTATION_METHODS.join(', ')}`)
  }
  str(e, 'path')
  str(e, 'query', true)
  strOrNull(e, 'contentType')
  strOrNull(e, 'body')
  if (!BODY_ENCODINGS.includes(e.bodyEncoding as BodyEncoding)) {
    throw new MalformedEventError('bodyEncoding must be "utf8", "base64" or "sealed"')
  }
  if (e.bodyEncoding === 'sealed' && (typeof e.body !== 'string' || !SEALED_RE.test(e.body))) {
    throw new MalformedEventError('a sealed body must be base64url text')
  }
  str(e, 'resource')
  if (e.headers === null || typeof e.headers !== 'object' || Array.isArray(e.headers) ||
      !Object.values(e.headers).every((v) => typeof v === 'string')) {
    throw new MalformedEventError('headers must be an object of strings')
  }
  // id, origin, content type and headers become request headers of the replay. One that cannot
  // be sent would be retried forever, holding its partition; one that frames or routes the
  // request would let an event change where or how it lands.
  for (const field of ['id', 'origin', 'contentType'] as const) {
    if (typeof e[field] === 'string' && CONTROL_RE.test(e[field])) throw new MalformedEventError(`${field} holds a control character`)
  }
  for (const [name, value] of Object.entries(e.headers as Record<string, string>)) {
    if (!HEADER_NAME_RE.test(name)) throw new MalformedEventError(`header name ${JSON.stringify(name.slice(0, 64))} is not a lower-case HTTP token`)
    if (RESERVED_HEADERS.has(name)) throw new MalformedEventError(`header ${name} frames or routes the request; an event may not set it`)
    if (CONTROL_RE.test(value)) throw new MalformedEventError(`header ${name} holds a control character`)
  }
  // Optional: events written before forwarded headers existed have no such field.
  e.sealedHeaders ??= null
  strOrNull(e, 'sealedHeaders')
  e.idSegments ??= []
  if (!Array.isArray(e.idSegments) || !e.idSegments.every((i) => Number.isInteger(i) && i > 0 && i < 64)) {
    throw new MalformedEventError('idSegments must be a list of path segment positions')
  }
  if (e.created !== null) {
    const c = e.created as Record<string, unknown> | undefined
    if (c === undefined || typeof c !== 'object' || typeof c.id !== 'string' || typeof c.field !== 'string' ||
        !IDENTITY_MODES.includes(c.mode as IdentityMode)) {
      throw new MalformedEventError('created must be null or { id, field, mode }')
    }
  }
  if (e.repair !== undefined && e.repair !== true) throw new MalformedEventError('repair must be true when present')
  if (e.trace !== undefined) checkTrace(e.trace)
  return e as unknown as RegionsyncEvent
}

// eslint-disable-next-line no-control-regex
const CONTROL_RE = /[\u0000-\u0008\u000a-\u001f\u007f]/
const SEALED_RE = /^[A-Za-z0-9_-]+$/
const HEADER_NAME_RE = /^[!#$%&'*+.^_`|~0-9a-z-]+$/
/** Headers the replay's own connection and framing decide. */
const RESERVED_HEADERS = new Set(['host', 'content-length', 'transfer-encoding', 'connection', 'keep-alive', 'proxy-connection', 'upgrade', 'expect', 'te', 'trailer'])

/** A trace context is sent as headers of the replay: only a valid one, and nothing else, passes. */
function checkTrace (trace: unknown): void {
  if (trace === null || typeof trace !== 'object' || Array.isArray(trace)) throw new MalformedEventError('trace must be an object when present')
  const t = trace as Record<string, unknown>
  if (parseTraceparent(t.traceparent) === null) throw new MalformedEventError('trace.traceparent is not a valid W3C traceparent')
  if (t.tracestate !== undefined && !isTracestate(t.tracestate)) throw new MalformedEventError('trace.tracestate must be printable text of at most 512 characters')
  const unknown = Object.keys(t).find((k) => k !== 'traceparent' && k !== 'tracestate')
  if (unknown !== undefined) throw new MalformedEventError(`trace has an unknown field ${JSON.stringify(unknown.slice(0, 64))}`)
}

function str (e: Record<string, unknown>, field: string, allowEmpty = false): void {
  const v = e[field]
  if (typeof v !== 'string' || (!allowEmpty && v.length === 0)) {
    throw new MalformedEventError(`${field} is missing or not a string`)
  }
}

function strOrNull (e: Record<string, unknown>, field: string): void {
  const v = e[field]
  if (v !== null && typeof v !== 'string') throw new MalformedEventError(`${field} must be a string or null`)
}
