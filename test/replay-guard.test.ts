import { createHash, randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { jetstreamManager } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import regionsync, { CLAIM_ABANDONED_MS, REPLAY_OUTCOME_HEADER } from '@regionsync/publisher'
import {
  IDEMPOTENCY_KEY_HEADER, REPLAY_ORIGIN_HEADER, REPLAY_RESOURCE_HEADER, REPLAY_SEQ_HEADER, REPLAY_SIGNATURE_HEADER,
  RegionRecords, createSigner, names, serverSupports
} from '@regionsync/shared'
import Fastify from 'fastify'
import { request } from 'undici'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { SIGNING_KEY, connect, uniqueNamespace, waitFor } from './helpers/fixtures.js'
import { NATS_SERVER_BIN, NatsServer } from './helpers/nats-server.js'

/**
 * The replay guard on a target (I4): each of its answers, against a real nats-server of each line
 * the machine has: the current one (NATS_SERVER_BIN) and the old one (NATS_SERVER_OLD_BIN, by
 * default Debian's 2.9.10 at /usr/sbin/nats-server). Per-key TTLs exist only on the current line.
 */
const OLD_BIN = process.env.NATS_SERVER_OLD_BIN ?? '/usr/sbin/nats-server'
const BINS = [...new Set([NATS_SERVER_BIN, OLD_BIN])].filter((bin) => !bin.includes('/') || existsSync(bin))

const signer = createSigner(SIGNING_KEY)

interface Sent { status: number, headers: Record<string, string | string[] | undefined>, body: string }

describe.each(BINS)('replay guard on %s', (bin) => {
  let server: NatsServer
  const cleanup: Array<() => Promise<unknown>> = []
  beforeAll(async () => { server = await NatsServer.start(bin) })
  afterAll(async () => { await server.stop() })
  afterEach(async () => { for (const fn of cleanup.splice(0).reverse()) await fn() })

  async function connection (): Promise<NatsConnection> {
    const nc = await connect(server.url)
    cleanup.push(async () => { if (!nc.isClosed()) await nc.close() })
    return nc
  }

  /** A target API with the plugin; `handle` decides each answer of the write route. */
  async function target (handle: (n: number) => Promise<number> | number = () => 201, opts: { ns?: string } = {}): Promise<{ url: string, ns: string, nc: NatsConnection, handled: () => number }> {
    const ns = opts.ns ?? uniqueNamespace()
    const nc = await connection()
    const spoolDir = await mkdtemp(join(tmpdir(), 'regionsync-spool-'))
    cleanup.push(async () => await rm(spoolDir, { recursive: true, force: true }))
    const app = Fastify({ logger: false })
    cleanup.push(async () => await app.close())
    await app.register(regionsync, { region: 'eu', connection: nc, signingKey: SIGNING_KEY, namespace: ns, spool: { dir: spoolDir } })
    let handled = 0
    app.put('/v3/users/:id', async (req, reply) => {
      const status = await handle(++handled)
      return await reply.code(status).send({ user: { id: (req.params as { id: string }).id, applied: handled } })
    })
    return { url: await app.listen({ port: 0, host: '127.0.0.1' }), ns, nc, handled: () => handled }
  }

  /** Sends one genuine replay, as a replicator would. */
  async function replay (url: string, r: { eventId: string, body?: string, seq?: number, resource?: string, user?: string }): Promise<Sent> {
    const body = r.body ?? '{"user":{"name":"ann"}}'
    const resource = r.resource ?? '/v3/users/u1'
    const seq = r.seq ?? null
    const headers: Record<string, string> = {
      'content-type': 'application/json',
      [IDEMPOTENCY_KEY_HEADER]: r.eventId,
      [REPLAY_ORIGIN_HEADER]: 'us',
      [REPLAY_RESOURCE_HEADER]: encodeURIComponent(resource),
      [REPLAY_SIGNATURE_HEADER]: signer.signReplay({ eventId: r.eventId, origin: 'us', method: 'PUT', body: Buffer.from(body), seq, resource })
    }
    if (seq !== null) headers[REPLAY_SEQ_HEADER] = String(seq)
    const res = await request(`${url}/v3/users/${r.user ?? 'u1'}`, { method: 'PUT', headers, body })
    return { status: res.statusCode, headers: res.headers, body: await res.body.text() }
  }

  const eventId = (): string => `evt-${randomBytes(6).toString('hex')}`

  it('a duplicate of a finished replay gets the first answer, without the handler', async () => {
    const t = await target()
    const id = eventId()
    const first = await replay(t.url, { eventId: id, seq: 1 })
    const second = await replay(t.url, { eventId: id, seq: 1 })
    expect(first.status).toBe(201)
    // The first answer says the guard recorded it: the replicator need not record it twice.
    expect(first.headers[REPLAY_OUTCOME_HEADER]).toBe('applied')
    expect({ status: second.status, type: second.headers['content-type'], body: second.body })
      .toEqual({ status: 201, type: first.headers['content-type'], body: first.body })
    expect(second.headers[REPLAY_OUTCOME_HEADER]).toBe('duplicate')
    expect(t.handled()).toBe(1)
  })

  it('a duplicate sent to another process of the target gets the first answer, without the handler', async () => {
    const a = await target()
    const b = await target(() => 201, { ns: a.ns })
    const id = eventId()
    const first = await replay(a.url, { eventId: id, seq: 1 })
    const again = await replay(b.url, { eventId: id, seq: 1 })
    expect(first.status).toBe(201)
    expect({ status: again.status, body: again.body, outcome: again.headers[REPLAY_OUTCOME_HEADER] })
      .toEqual({ status: 201, body: first.body, outcome: 'duplicate' })
    expect(a.handled() + b.handled()).toBe(1)
  })

  it('the same replay while the first still runs gets 409 with Retry-After: 1, and the first finishes alone', async () => {
    let release: () => void = () => {}
    const gate = new Promise<void>((resolve) => { release = resolve })
    const t = await target(async () => { await gate; return 201 })
    const id = eventId()
    const first = replay(t.url, { eventId: id })
    await waitFor('the first replay in its handler', () => t.handled() === 1)
    const concurrent = await replay(t.url, { eventId: id })
    expect(concurrent.status).toBe(409)
    expect(concurrent.headers['retry-after']).toBe('1')
    expect(concurrent.headers[REPLAY_OUTCOME_HEADER]).toBe('in-progress')
    release()
    expect((await first).status).toBe(201)
    expect((await replay(t.url, { eventId: id })).status).toBe(201)
    expect(t.handled()).toBe(1)
  })

  it('the same event id with another body gets 422', async () => {
    const t = await target()
    const id = eventId()
    expect((await replay(t.url, { eventId: id })).status).toBe(201)
    const other = await replay(t.url, { eventId: id, body: '{"user":{"name":"bob"}}' })
    expect(other.status).toBe(422)
    expect(other.headers[REPLAY_OUTCOME_HEADER]).toBe('different-body')
    expect(t.handled()).toBe(1)
  })

  it('a replay older than the last applied for its resource gets 208 superseded, without the handler; other resources are not fenced', async () => {
    const t = await target()
    expect((await replay(t.url, { eventId: eventId(), seq: 5 })).status).toBe(201)
    const late = eventId()
    for (let i = 0; i < 2; i++) {
      const res = await replay(t.url, { eventId: late, seq: 3 })
      expect(res.status).toBe(208)
      expect(res.headers[REPLAY_OUTCOME_HEADER]).toBe('superseded')
    }
    expect((await replay(t.url, { eventId: eventId(), seq: 5 })).status).toBe(208)
    expect(t.handled()).toBe(1)
    expect((await replay(t.url, { eventId: eventId(), seq: 6 })).status).toBe(201)
    expect((await replay(t.url, { eventId: eventId(), seq: 2, resource: '/v3/users/u2', user: 'u2' })).status).toBe(201)
    // A replay without a sequence (a repair) is not fenced.
    expect((await replay(t.url, { eventId: eventId() })).status).toBe(201)
    expect(t.handled()).toBe(4)
  })

  it('a claim abandoned by a crashed process is taken over; a fresh one is not', async () => {
    const t = await target()
    const records = await RegionRecords.open(t.nc, names(t.ns).replayBucket, 'eu', { replicas: 1, description: 'test' })
    cleanup.push(async () => { records.close() })
    const body = '{"user":{"name":"ann"}}'
    const bodyHash = createHash('sha256').update(body).digest('base64url')
    const abandoned = eventId()
    await records.create(abandoned, JSON.stringify({ state: 'running', bodyHash, at: Date.now() - CLAIM_ABANDONED_MS - 1000 }))
    const running = eventId()
    await records.create(running, JSON.stringify({ state: 'running', bodyHash, at: Date.now() }))
    expect((await replay(t.url, { eventId: abandoned, body })).status).toBe(201)
    expect((await replay(t.url, { eventId: running, body })).status).toBe(409)
    expect(t.handled()).toBe(1)
  })

  it('a claim written although its write timed out (NATS frozen) is taken over by the next delivery at once, and the handler runs once', async () => {
    const t = await target()
    const records = await RegionRecords.open(t.nc, names(t.ns).replayBucket, 'eu', { replicas: 1, description: 'test' })
    cleanup.push(async () => { records.close() })
    const id = eventId()
    // The claim reaches the server's socket, but the server answers only after the plugin gave up:
    // the replay is refused (nothing ran), and the claim is written late.
    await server.freeze()
    let first: Sent
    let bound: NodeJS.Timeout | undefined
    try {
      // Bounded, so a replay that waits on the frozen server fails here instead of at the test's timeout.
      first = await Promise.race([
        replay(t.url, { eventId: id, seq: 1 }),
        new Promise<never>((_resolve, reject) => { bound = setTimeout(() => reject(new Error('the replay was not answered within 10 s while NATS was frozen')), 10_000) })
      ])
    } finally {
      clearTimeout(bound)
      server.thaw()
    }
    expect(first.status).toBe(503)
    await waitFor('the late claim to be written', async () => (await records.get(id))?.includes('"running"'))
    expect(t.handled()).toBe(0)
    // The retry does not wait CLAIM_ABANDONED_MS for a claim nobody is running.
    const second = await replay(t.url, { eventId: id, seq: 1 })
    expect(second.status).toBe(201)
    expect((await replay(t.url, { eventId: id, seq: 1 })).headers[REPLAY_OUTCOME_HEADER]).toBe('duplicate')
    expect(t.handled()).toBe(1)
  }, 30_000)

  it('a replay answered non-2xx gives its claim back: the retry runs the handler', async () => {
    const t = await target((n) => n === 1 ? 503 : 201)
    const id = eventId()
    const refused = await replay(t.url, { eventId: id, seq: 1 })
    expect({ status: refused.status, outcome: refused.headers[REPLAY_OUTCOME_HEADER] }).toEqual({ status: 503, outcome: undefined })
    expect((await replay(t.url, { eventId: id, seq: 1 })).status).toBe(201)
    expect((await replay(t.url, { eventId: id, seq: 1 })).status).toBe(201)
    expect(t.handled()).toBe(2)
  })

  it('records carry their own TTL where the server has per-key TTLs, and none where it would ignore them', async () => {
    const t = await target((n) => n === 1 ? 500 : 201)
    const released = eventId()
    expect((await replay(t.url, { eventId: released })).status).toBe(500)
    const applied = eventId()
    expect((await replay(t.url, { eventId: applied })).status).toBe(201)
    const jsm = await jetstreamManager(t.nc)
    const bucket = names(t.ns).replayBucket
    const ttlOf = async (id: string): Promise<string | undefined> =>
      (await jsm.streams.getMessage(`KV_${bucket}`, { last_by_subj: `$KV.${bucket}.eu.${id}` }))?.header?.get('Nats-TTL') || undefined
    const config = (await jsm.streams.info(`KV_${bucket}`)).config as { allow_msg_ttl?: boolean }
    if (serverSupports(t.nc, 'perMessageTtl')) {
      expect(config.allow_msg_ttl).toBe(true)
      expect(await ttlOf(released)).toBe(`${CLAIM_ABANDONED_MS / 1000}s`)
      expect(await ttlOf(applied)).toBe(`${(7 + 1) * 86_400}s`)
    } else {
      expect(config.allow_msg_ttl).not.toBe(true)
      expect(await ttlOf(released)).toBeUndefined()
      expect(await ttlOf(applied)).toBeUndefined()
    }
  })
})
