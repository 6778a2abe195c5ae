import { randomBytes } from 'node:crypto'

/**
 * W3C Trace Context (https://www.w3.org/TR/trace-context/) of the request that made an event: the
 * replay in each region is sent as its child, so one trace shows a write from the source request
 * to every region.
 */
export interface EventTrace {
  /** `00-<trace id>-<parent id>-<flags>`, lower-case hex. */
  traceparent: string
  /** Vendor entries, passed on unchanged; absent when the source had none. */
  tracestate?: string
}

export const TRACEPARENT_HEADER = 'traceparent'
export const TRACESTATE_HEADER = 'tracestate'

export interface ParsedTraceparent {
  traceId: string
  spanId: string
  /** Trace flags as a number (bit 0: sampled). */
  flags: number
}

// Version 00 has exactly four fields; a later version may append fields, which a version-00
// reader ignores (the spec's forward compatibility rule). Version ff is invalid.
const TRACEPARENT_RE = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[0-9a-f-]*)?$/
const ZERO_TRACE_ID = '0'.repeat(32)
const ZERO_SPAN_ID = '0'.repeat(16)
/** The spec's limit; printable ASCII only, since it is sent as a header again. */
const TRACESTATE_MAX_LENGTH = 512
const TRACESTATE_RE = /^[\x20-\x7e]*$/

/** The parts of a valid `traceparent`, or null for anything the spec says to ignore. */
export function parseTraceparent (value: unknown): ParsedTraceparent | null {
  if (typeof value !== 'string') return null
  const m = TRACEPARENT_RE.exec(value)
  if (m === null) return null
  const [, version, traceId, spanId, flags, rest] = m as unknown as [string, string, string, string, string, string | undefined]
  if (version === 'ff' || (version === '00' && rest !== undefined)) return null
  if (traceId === ZERO_TRACE_ID || spanId === ZERO_SPAN_ID) return null
  return { traceId, spanId, flags: parseInt(flags, 16) }
}

export function isTracestate (value: unknown): value is string {
  return typeof value === 'string' && value.length <= TRACESTATE_MAX_LENGTH && TRACESTATE_RE.test(value)
}

export function formatTraceparent (traceId: string, spanId: string, flags: number): string {
  return `00-${traceId}-${spanId}-${(flags & 0xff).toString(16).padStart(2, '0')}`
}

/**
 * The trace context of an incoming request's headers, or null when it has none or an invalid one
 * (the spec: an invalid traceparent is ignored, and tracestate with it).
 */
export function traceFromHeaders (headers: Record<string, string | string[] | undefined>): EventTrace | null {
  const parsed = parseTraceparent(headers[TRACEPARENT_HEADER])
  if (parsed === null) return null
  const trace: EventTrace = { traceparent: formatTraceparent(parsed.traceId, parsed.spanId, parsed.flags) }
  const state = headers[TRACESTATE_HEADER]
  // Several tracestate headers are one list (RFC 9110 field combination).
  const joined = Array.isArray(state) ? state.join(',') : state
  if (isTracestate(joined) && joined.trim() !== '') trace.tracestate = joined
  return trace
}

/** A `traceparent` for a new span under `parent`: the same trace and flags, a new span id. */
export function childTraceparent (parent: string, spanId = randomBytes(8).toString('hex')): string | null {
  const p = parseTraceparent(parent)
  return p === null ? null : formatTraceparent(p.traceId, spanId, p.flags)
}
