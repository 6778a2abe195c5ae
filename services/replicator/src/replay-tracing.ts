import { TRACEPARENT_HEADER, TRACESTATE_HEADER, formatTraceparent, parseTraceparent, type Otel } from '@regionsync/shared'
import type { Replay } from './applier.js'

/** Ends a replay's span with the target's status, or the failure that left it without one. */
export type EndReplaySpan = (status: number | null, err?: unknown) => void

const NO_SPAN: EndReplaySpan = () => {}

/**
 * The `regionsync replay` span of one request to the target, when an OpenTelemetry SDK is
 * registered: a child of the event's trace context (the source's publish), and the parent the
 * target sees in the replay's `traceparent`. Without an SDK the replay keeps the child
 * `traceparent` buildReplay gave it.
 */
export class ReplayTracing {
  readonly #otel: Otel | null
  readonly #tracer: ReturnType<Otel['trace']['getTracer']> | null
  readonly #region: string

  constructor (otel: Otel | null, region: string) {
    this.#otel = otel
    this.#tracer = otel?.trace.getTracer('@regionsync/replicator') ?? null
    this.#region = region
  }

  /** Starts the span and points the replay's `traceparent` at it. */
  start (replay: Replay): EndReplaySpan {
    const otel = this.#otel
    if (otel === null || this.#tracer === null) return NO_SPAN
    let parent = otel.ROOT_CONTEXT
    const p = replay.trace === null ? null : parseTraceparent(replay.trace.traceparent)
    if (p !== null) {
      parent = otel.trace.setSpanContext(parent, {
        traceId: p.traceId,
        spanId: p.spanId,
        traceFlags: p.flags,
        isRemote: true,
        ...(replay.trace?.tracestate !== undefined ? { traceState: otel.createTraceState(replay.trace.tracestate) } : {})
      })
    }
    const span = this.#tracer.startSpan('regionsync replay', {
      kind: otel.SpanKind.CLIENT,
      attributes: { 'http.request.method': replay.method, 'url.path': replay.path, 'regionsync.region': this.#region }
    }, parent)
    const sc = span.spanContext()
    // A span that records (an SDK is registered) is the replay's parent at the target.
    if (span.isRecording() && otel.trace.isSpanContextValid(sc)) {
      replay.headers[TRACEPARENT_HEADER] = formatTraceparent(sc.traceId, sc.spanId, sc.traceFlags)
      const state = sc.traceState?.serialize()
      if (state !== undefined && state !== '') replay.headers[TRACESTATE_HEADER] = state
    }
    return (status, err) => {
      if (status !== null) span.setAttribute('http.response.status_code', status)
      if (err !== undefined) span.recordException(err instanceof Error ? err : String(err))
      if (err !== undefined || status === null || status >= 400) span.setStatus({ code: otel.SpanStatusCode.ERROR })
      span.end()
    }
  }
}
