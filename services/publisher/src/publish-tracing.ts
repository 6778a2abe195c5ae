import { formatTraceparent, parseTraceparent, traceFromHeaders, type EventTrace, type Otel } from '@regionsync/shared'
import type { FastifyRequest } from 'fastify'

/** The publish of one event, as a span when an OpenTelemetry SDK is registered. */
export interface PublishTrace {
  /** What the event carries: the publish span's context, else the source request's; null when neither. */
  trace: EventTrace | null
  /** Ends the span (an error marks it failed). */
  /** `subject` is null for an event spooled before the plugin first reached NATS. */
  end: (sent: { subject: string | null, msgId: string } | null, err?: unknown) => void
}

const NO_SPAN = (): void => {}

/**
 * Starts the `regionsync publish` span under the request's trace: the active OpenTelemetry span
 * when the application has one (its HTTP instrumentation), else the request's own `traceparent`.
 * Without `@opentelemetry/api`, or without an SDK, the event carries the request's trace context.
 */
export class PublishTracing {
  readonly #otel: Otel | null
  readonly #tracer: ReturnType<Otel['trace']['getTracer']> | null
  readonly #region: string

  constructor (otel: Otel | null, region: string) {
    this.#otel = otel
    this.#tracer = otel?.trace.getTracer('@regionsync/publisher') ?? null
    this.#region = region
  }

  start (request: FastifyRequest): PublishTrace {
    const fromHeaders = traceFromHeaders(request.headers)
    const otel = this.#otel
    if (otel === null || this.#tracer === null) return { trace: fromHeaders, end: NO_SPAN }
    const active = otel.context.active()
    let parent = active
    const activeSpan = otel.trace.getSpan(active)
    if ((activeSpan === undefined || !otel.trace.isSpanContextValid(activeSpan.spanContext())) && fromHeaders !== null) {
      const p = parseTraceparent(fromHeaders.traceparent) as NonNullable<ReturnType<typeof parseTraceparent>>
      parent = otel.trace.setSpanContext(active, {
        traceId: p.traceId,
        spanId: p.spanId,
        traceFlags: p.flags,
        isRemote: true,
        ...(fromHeaders.tracestate !== undefined ? { traceState: otel.createTraceState(fromHeaders.tracestate) } : {})
      })
    }
    const span = this.#tracer.startSpan('regionsync publish', {
      kind: otel.SpanKind.PRODUCER,
      attributes: { 'messaging.system': 'nats', 'messaging.operation.type': 'send', 'regionsync.origin': this.#region }
    }, parent)
    const sc = span.spanContext()
    let trace = fromHeaders
    if (otel.trace.isSpanContextValid(sc)) {
      trace = { traceparent: formatTraceparent(sc.traceId, sc.spanId, sc.traceFlags) }
      const state = sc.traceState?.serialize()
      if (state !== undefined && state !== '') trace.tracestate = state
    }
    return {
      trace,
      end (sent, err) {
        if (sent !== null) span.setAttributes({ ...(sent.subject !== null ? { 'messaging.destination.name': sent.subject } : {}), 'messaging.message.id': sent.msgId })
        if (err !== undefined) {
          span.recordException(err instanceof Error ? err : String(err))
          span.setStatus({ code: otel.SpanStatusCode.ERROR })
        }
        span.end()
      }
    }
  }
}
