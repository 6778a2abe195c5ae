import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { trace } from '@opentelemetry/api'
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-base'
import { regionsync } from '@regionsync/publisher'
import { formatTraceparent, parseTraceparent } from '@regionsync/shared'
import Fastify from 'fastify'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { SIGNING_KEY, call, startReplicator, uniqueNamespace, waitFor } from './helpers/fixtures.js'
import { useNats } from './helpers/harness.js'
import { TestTarget } from './helpers/target.js'

const h = useNats()

// The application registers an OpenTelemetry SDK; regionsync finds it through @opentelemetry/api.
const exporter = new InMemorySpanExporter()
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] })
beforeAll(() => { trace.setGlobalTracerProvider(provider) })
afterAll(async () => {
  await provider.shutdown()
  trace.disable()
})

async function source (ns: string): Promise<string> {
  const app = Fastify({ logger: false })
  const spoolDir = await mkdtemp(join(tmpdir(), 'regionsync-spool-'))
  h.defer(async () => await rm(spoolDir, { recursive: true, force: true }))
  h.defer(async () => await app.close())
  await app.register(regionsync, { region: 'us', connection: await h.connection(), signingKey: SIGNING_KEY, namespace: ns, spool: { dir: spoolDir } })
  app.put('/notes/:id', async (request) => request.body)
  return await app.listen({ port: 0, host: '127.0.0.1' })
}

async function region (name: string, ns: string): Promise<TestTarget> {
  const target = await TestTarget.start()
  h.defer(async () => await target.close())
  const r = await startReplicator(await h.connection(), { region: name, namespace: ns, target: target.url })
  h.defer(async () => await r.close())
  return target
}

const parentOf = (span: ReadableSpan): string | undefined => span.parentSpanContext?.spanId

describe('trace context', () => {
  it('one trace: source request -> publish -> replay in eu and in ap, and each target sees its replay as parent', async () => {
    const ns = uniqueNamespace()
    const api = await source(ns)
    const eu = await region('eu', ns)
    const ap = await region('ap', ns)

    // The client's own span, propagated in the request as any instrumented HTTP client does.
    const client = trace.getTracer('test-client').startSpan('source request')
    const sc = client.spanContext()
    const res = await call(api, 'PUT', '/notes/a', { text: 'traced' }, { traceparent: formatTraceparent(sc.traceId, sc.spanId, sc.traceFlags), tracestate: 'vendor=abc' })
    client.end()
    expect(res.status).toBe(200)
    await waitFor('the replay in both regions', () => eu.requests.length > 0 && ap.requests.length > 0)
    await waitFor('both replay spans', () => exporter.getFinishedSpans().filter((s) => s.name === 'regionsync replay').length === 2)

    const spans = exporter.getFinishedSpans()
    expect(new Set(spans.map((s) => s.spanContext().traceId))).toEqual(new Set([sc.traceId]))
    const publish = spans.filter((s) => s.name === 'regionsync publish')
    expect(publish).toHaveLength(1)
    expect(parentOf(publish[0] as ReadableSpan)).toBe(sc.spanId)
    const replays = spans.filter((s) => s.name === 'regionsync replay')
    expect(replays.map((s) => s.attributes['regionsync.region']).sort()).toEqual(['ap', 'eu'])
    for (const replay of replays) {
      expect(parentOf(replay)).toBe(publish[0]?.spanContext().spanId)
      expect(replay.attributes['http.response.status_code']).toBe(200)
      const target = replay.attributes['regionsync.region'] === 'eu' ? eu : ap
      const sent = parseTraceparent(target.requests[0]?.headers.traceparent)
      expect(sent).toEqual({ traceId: sc.traceId, spanId: replay.spanContext().spanId, flags: 1 })
      expect(target.requests[0]?.headers.tracestate).toBe('vendor=abc')
    }
  })
})
