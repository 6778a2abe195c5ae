import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { jetstreamManager } from '@nats-io/jetstream'
import regionsync from '@regionsync/publisher'
import {
  EVENT_SIGNATURE_HEADER, IDEMPOTENCY_KEY_HEADER, REPLAY_ORIGIN_HEADER, REPLAY_RESOURCE_HEADER, REPLAY_SEQ_HEADER, REPLAY_SIGNATURE_HEADER,
  createSigner, decodeEvent, eventBody, names, type RegionsyncEvent
} from '@regionsync/shared'
// Resolved from test/fastify4, whose package pins Fastify 4: the plugin must work on both majors.
import Fastify, { type FastifyInstance } from 'fastify'
import { describe, expect, it } from 'vitest'
import { SIGNING_KEY, uniqueNamespace } from '../helpers/fixtures.js'
import { useNats } from '../helpers/harness.js'
import { streamMessages } from '../helpers/stream.js'

const FASTIFY_VERSION = (createRequire(import.meta.url)('fastify/package.json') as { version: string }).version

const h = useNats()

interface Published { event: RegionsyncEvent, data: Uint8Array, signature: string | undefined, msgId: string | undefined }

async function setup (routes: (app: FastifyInstance) => void, options: { maxBodyBytes?: number } = {}): Promise<{ app: FastifyInstance, published: () => Promise<Published[]> }> {
  const nc = await h.connection()
  const ns = uniqueNamespace()
  const spoolDir = await mkdtemp(join(tmpdir(), 'regionsync-spool-'))
  h.defer(async () => await rm(spoolDir, { recursive: true, force: true }))
  const app = Fastify({ logger: false })
  h.defer(async () => await app.close())
  await app.register(regionsync, { region: 'us', connection: nc, signingKey: SIGNING_KEY, namespace: ns, spool: { dir: spoolDir }, ...options })
  routes(app)
  await app.ready()
  const published = async (): Promise<Published[]> => {
    const messages = await streamMessages(await jetstreamManager(nc), names(ns).eventStream)
    return messages.map((m) => ({ event: decodeEvent(m.data), data: m.data, signature: m.header?.get(EVENT_SIGNATURE_HEADER), msgId: m.header?.get('Nats-Msg-Id') }))
  }
  return { app, published }
}

const json = { 'content-type': 'application/json' }

describe('the plugin on Fastify 4', () => {
  it('runs on Fastify 4.29', async () => {
    expect(FASTIFY_VERSION).toMatch(/^4\.29\./)
    const { app } = await setup(() => {})
    expect(app.version).toBe(FASTIFY_VERSION)
  })

  it('publishes one signed event for a 2xx POST, with the body as sent and the created id', async () => {
    const s = await setup((app) => {
      app.post<{ Body: { name: string, password?: string } }>('/v3/users', async (request, reply) => {
        // Rewritten in place, as an API that hashes a password does: the event keeps what was sent.
        delete request.body.password
        return await reply.code(201).send({ user: { id: 'k4', name: request.body.name } })
      })
    })
    const sent = '{ "name" : "ann",\n"password":"hunter2" }'
    const res = await s.app.inject({ method: 'POST', url: '/v3/users?domain=default', headers: json, payload: sent })
    expect(res.statusCode).toBe(201)

    const all = await s.published()
    expect(all).toHaveLength(1)
    const { event, data, signature, msgId } = all[0] as Published
    expect(event).toMatchObject({ origin: 'us', method: 'POST', path: '/v3/users', query: 'domain=default', contentType: 'application/json' })
    expect(eventBody(event)?.equals(Buffer.from(sent))).toBe(true)
    expect(event.created).toEqual({ id: 'k4', field: 'user.id', mode: 'inject' })
    expect(event.resource).toBe('/v3/users/k4')
    expect(() => createSigner(SIGNING_KEY).verifyEvent(data, signature)).not.toThrow()
    expect(() => createSigner(randomBytes(32).toString('hex')).verifyEvent(data, signature)).toThrow()
    expect(msgId).toBe(event.id)
  })

  it('publishes nothing for a GET or a route that opts out', async () => {
    let ran = 0
    const s = await setup((app) => {
      app.get('/v3/users/:id', async () => { ran++; return { user: { id: 'k4' } } })
      app.post('/internal/cache/flush', { config: { regionsync: false } }, async (_req, reply) => { ran++; return await reply.code(202).send({ ok: true }) })
    })
    expect((await s.app.inject({ method: 'GET', url: '/v3/users/k4' })).statusCode).toBe(200)
    expect((await s.app.inject({ method: 'POST', url: '/internal/cache/flush', headers: json, payload: '{}' })).statusCode).toBe(202)
    expect(ran).toBe(2)
    expect(await s.published()).toHaveLength(0)
  })

  it('refuses a body over maxBodyBytes with 413 before the handler runs', async () => {
    let ran = 0
    const s = await setup((app) => {
      app.post('/v3/things', async (_req, reply) => { ran++; return await reply.code(201).send({ id: 't1' }) })
    }, { maxBodyBytes: 64 })
    const res = await s.app.inject({ method: 'POST', url: '/v3/things', headers: json, payload: JSON.stringify({ name: 'x'.repeat(100) }) })
    expect(res.statusCode).toBe(413)
    expect(res.json()).toMatchObject({ statusCode: 413, code: 'REGIONSYNC_E_BODY_TOO_LARGE' })
    expect(ran).toBe(0)
    expect(await s.published()).toHaveLength(0)
  })

  it('records a replay whose async handler sends without returning, answers its duplicate from the record, and its older sibling 208', async () => {
    let ran = 0
    const s = await setup((app) => {
      app.put('/v3/users/:id', async (_req, reply) => { ran++; reply.code(200).send({ user: { id: 'u1', run: ran } }) })
    })
    const body = '{"user":{"name":"ann"}}'
    const send = async (eventId: string, seq: number): Promise<{ statusCode: number, body: string, headers: Record<string, unknown> }> => {
      const headers = {
        ...json,
        [IDEMPOTENCY_KEY_HEADER]: eventId,
        [REPLAY_ORIGIN_HEADER]: 'eu',
        [REPLAY_SEQ_HEADER]: String(seq),
        [REPLAY_RESOURCE_HEADER]: encodeURIComponent('/v3/users/u1'),
        [REPLAY_SIGNATURE_HEADER]: createSigner(SIGNING_KEY).signReplay({ eventId, origin: 'eu', method: 'PUT', body: Buffer.from(body), seq, resource: '/v3/users/u1' })
      }
      return await s.app.inject({ method: 'PUT', url: '/v3/users/u1', headers, payload: body })
    }
    const first = await send('evt-f4-1', 7)
    expect(first.statusCode).toBe(200)
    expect((await send('evt-f4-1', 7)).body).toBe(first.body)
    const older = await send('evt-f4-0', 6)
    expect(older.statusCode).toBe(208)
    expect(older.headers['x-regionsync-outcome']).toBe('superseded')
    expect(ran).toBe(1)
    // A replay is never published again.
    expect(await s.published()).toHaveLength(0)
  })
})
