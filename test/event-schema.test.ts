import { randomBytes } from 'node:crypto'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { jetstreamManager } from '@nats-io/jetstream'
import { regionsync, type RegionsyncPluginOptions } from '@regionsync/publisher'
import { createEvent, decodeEvent, encodeEvent, names } from '@regionsync/shared'
import { Ajv2020 } from 'ajv/dist/2020.js'
import addFormats from 'ajv-formats'
import Fastify from 'fastify'
import { beforeAll, describe, expect, it } from 'vitest'
import { SIGNING_KEY, call, uniqueNamespace } from './helpers/fixtures.js'
import { useNats } from './helpers/harness.js'
import { streamMessages } from './helpers/stream.js'

const h = useNats()
const ENCRYPTION_KEY = randomBytes(32).toString('hex')
const SCHEMA_PATH = new URL('../shared/schema/event-v1.schema.json', import.meta.url)

let validate: ReturnType<Ajv2020['compile']>
beforeAll(async () => {
  const ajv = new Ajv2020({ strict: true, allErrors: true })
  ;(addFormats as unknown as (a: Ajv2020) => void)(ajv)
  validate = ajv.compile(JSON.parse(await readFile(SCHEMA_PATH, 'utf8')))
})

/** An API with the plugin, writes of every kind through it, and what landed on the stream, as raw JSON. */
async function emitted (options: Partial<RegionsyncPluginOptions>, writes: (url: string) => Promise<void>): Promise<unknown[]> {
  const nc = await h.connection()
  const ns = uniqueNamespace()
  const app = Fastify({ logger: false })
  const spoolDir = await mkdtemp(join(tmpdir(), 'regionsync-spool-'))
  h.defer(async () => await rm(spoolDir, { recursive: true, force: true }))
  h.defer(async () => await app.close())
  await app.register(regionsync, { region: 'us', connection: nc, signingKey: SIGNING_KEY, namespace: ns, spool: { dir: spoolDir }, ...options })
  app.addContentTypeParser('application/octet-stream', { parseAs: 'buffer' }, (_req, body, done) => { done(null, body) })
  app.post('/v1/users', async (_request, reply) => await reply.code(201).send({ user: { id: 'u-1' } }))
  app.post('/v1/orgs', { config: { regionsync: { createdId: 'org.slug', identity: 'put' } } }, async (_request, reply) => await reply.code(201).send({ org: { slug: 'acme' } }))
  app.patch('/v1/users/:id', async () => ({ ok: true }))
  app.put('/v1/files/:id', async () => ({ ok: true }))
  app.delete('/v1/users/:id', async (_request, reply) => await reply.code(204).send())
  const url = await app.listen({ port: 0, host: '127.0.0.1' })
  await writes(url)
  const messages = await streamMessages(await jetstreamManager(nc), names(ns).eventStream)
  return messages.map((m): unknown => JSON.parse(Buffer.from(m.data).toString('utf8')))
}

async function everyKindOfWrite (url: string): Promise<void> {
  expect((await call(url, 'POST', '/v1/users', { user: { name: 'ann' } }, { 'x-tenant': 't1', authorization: 'Bearer caller' })).status).toBe(201)
  expect((await call(url, 'POST', '/v1/orgs', { org: { name: 'Acme' } })).status).toBe(201)
  expect((await call(url, 'PATCH', '/v1/users/u-1?notify=false', { user: { email: 'a@example.org' } },
    { traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', tracestate: 'congo=t61rcWkgMzE' })).status).toBe(200)
  const binary = await fetch(`${url}/v1/files/f1`, { method: 'PUT', headers: { 'content-type': 'application/octet-stream' }, body: randomBytes(64) })
  expect(binary.status).toBe(200)
  expect((await call(url, 'DELETE', '/v1/users/u-1')).status).toBe(204)
}

describe('event schema (shared/schema/event-v1.schema.json)', () => {
  it('validates every event the plugin emits, as read back from the stream', async () => {
    const events = await emitted({ headers: ['x-tenant'], forwardHeaders: ['authorization'], encryptionKey: ENCRYPTION_KEY }, everyKindOfWrite)
    expect(events).toHaveLength(5)
    for (const event of events) expect({ event, errors: validate(event) ? null : validate.errors }).toEqual({ event, errors: null })
    // Every optional field the plugin writes was among them, so each was checked.
    const fields = new Set(events.flatMap((e) => Object.keys(e as object)))
    for (const f of ['sealedHeaders', 'idSegments', 'trace']) expect(fields).toContain(f)
    expect(events.filter((e) => (e as { sealedHeaders: string | null }).sealedHeaders !== null)).toHaveLength(1)
    expect(events.map((e) => (e as { trace?: unknown }).trace).filter((t) => t !== undefined))
      .toEqual([{ traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', tracestate: 'congo=t61rcWkgMzE' }])
    const kinds = events.map((e) => (e as { bodyEncoding: string }).bodyEncoding)
    expect(kinds).toContain('utf8')
    expect(kinds).toContain('base64')
    expect(events.map((e) => (e as { created: { mode: string } | null }).created?.mode)).toEqual(['inject', 'put', undefined, undefined, undefined])
  })

  it('validates sealed bodies', async () => {
    const events = await emitted({ encryptionKey: ENCRYPTION_KEY, sealBodies: true }, async (url) => {
      expect((await call(url, 'POST', '/v1/users', { user: { name: 'ann' } })).status).toBe(201)
    })
    expect((events[0] as { bodyEncoding: string }).bodyEncoding).toBe('sealed')
    expect(validate(events[0])).toBe(true)
  })

  it('is as strict as the replicator: what it rejects, decoding rejects too', () => {
    const good = JSON.parse(Buffer.from(encodeEvent(createEvent({ origin: 'us', method: 'PUT', path: '/a/1', resource: '/a/1', body: Buffer.from('{}'), contentType: 'application/json' }))).toString())
    expect(validate(good)).toBe(true)
    const bad: Array<Record<string, unknown>> = [
      { ...good, v: 2 },
      { ...good, method: 'GET' },
      { ...good, id: undefined },
      { ...good, bodyEncoding: 'hex' },
      { ...good, headers: { Host: 'x' } },
      { ...good, trace: { traceparent: 'not-a-traceparent' } },
      { ...good, trace: { traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', baggage: 'x' } },
      { ...good, repair: false },
      { ...good, created: { id: 'x', field: 'id', mode: 'guess' } }
    ]
    for (const e of bad) {
      expect(validate(e), JSON.stringify(e)).toBe(false)
      expect(() => decodeEvent(Buffer.from(JSON.stringify(e))), JSON.stringify(e)).toThrow()
    }
  })
})
