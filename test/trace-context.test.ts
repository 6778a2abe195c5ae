import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createServer } from 'node:http'
import { context, trace } from '@opentelemetry/api'
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks'
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-base'
import { regionsync } from '@regionsync/publisher'
import { formatTraceparent, parseTraceparent } from '@regionsync/shared'
import Fastify, { type FastifyServerFactory } from 'fastify'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { SIGNING_KEY, call, startReplicator, uniqueNamespace, waitFor } from './helpers/fixtures.js'
import { useNats } from './helpers/harness.js'
import { TestTarget } from './helpers/target.js'

const h = useNats()

// The application registers an OpenTelemetry SDK; regionsync finds it through @opentelemetry/api.
const exporter = new InMemorySpanExporter()
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] })
beforeAll(() => {
  trace.setGlobalTracerProvider(provider)
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable())
})
afterAll(async () => {
  await provider.shutdown()
  trace.disable()
  context.disable()
})

/** Runs each request inside a server span, as OpenTelemetry's HTTP instrumentation does. */
const withServerSpans: FastifyServerFactory = (handler) => createServer((req, res) => {
  const span = trace.getTracer('test-http').startSpan('server request')
  res.on('finish', () => { span.end() })
  context.with(trace.setSpan(context.active(), span), () => { handler(req, res) })
})

/**
 * The source API; `instrumented`: its server runs each request inside a server span, as
 * OpenTelemetry's HTTP instrumentation does, so that span is the active one in the plugin.
 */
async function source (ns: string, instrumented = false): Promise<string> {
  const app = Fastify(instrumented ? { logger: false, serverFactory: withServerSpans } : { logger: false })
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
    exporter.reset()
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

  it('under an instrumented server, the publish is a child of the active server span', async () => {
    exporter.reset()
    const ns = uniqueNamespace()
    const api = await source(ns, true)
    const eu = await region('eu', ns)
    expect((await call(api, 'PUT', '/notes/b', { text: 'traced' })).status).toBe(200)
    await waitFor('the replay span', () => exporter.getFinishedSpans().some((s) => s.name === 'regionsync replay'))
    const spans = exporter.getFinishedSpans()
    const server = spans.find((s) => s.name === 'server request') as ReadableSpan
    const publish = spans.find((s) => s.name === 'regionsync publish') as ReadableSpan
    const replay = spans.find((s) => s.name === 'regionsync replay') as ReadableSpan
    expect(parentOf(server)).toBeUndefined()
    expect(parentOf(publish)).toBe(server.spanContext().spanId)
    expect(parentOf(replay)).toBe(publish.spanContext().spanId)
    expect(new Set([server, publish, replay].map((s) => s.spanContext().traceId)).size).toBe(1)
    expect(parseTraceparent(eu.requests[0]?.headers.traceparent)?.spanId).toBe(replay.spanContext().spanId)
  })
})
