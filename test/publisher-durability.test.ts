import { createHash, randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { jetstreamManager } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import { buildIdentityApi, type IdentityState } from '@regionsync/examples'
import regionsync, { type RegionsyncPluginOptions } from '@regionsync/publisher'
import { listDeadLetters, type Replicator, type ReplicatorOptions, type StoredDeadLetter } from '@regionsync/replicator'
import {
  IDEMPOTENCY_KEY_HEADER, REPLAY_ORIGIN_HEADER, REPLAY_SIGNATURE_HEADER, createSigner, decodeEvent, eventBody, names,
  type RegionsyncEvent
} from '@regionsync/shared'
import Fastify, { type FastifyInstance } from 'fastify'
import { request } from 'undici'
import { describe, expect, it } from 'vitest'
import { ApiProcess } from './helpers/child-process.js'
import { registryValue } from './helpers/events.js'
import { SIGNING_KEY, connect, startReplicator, state, uniqueNamespace, waitFor } from './helpers/fixtures.js'
import { freePort } from './helpers/nats-server.js'
import { TestTarget, type ReceivedRequest } from './helpers/target.js'
import { DelayProxy } from './helpers/delay-proxy.js'
import { useNats } from './helpers/harness.js'
import { streamMessages } from './helpers/stream.js'

/*
 * Issue 3: no write the client saw succeed is ever lost. Each proof drives real processes (the
 * example API as a child process, nats-server killed and restarted on its store, replicators) and
 * checks what a user would see: the other region's data, the stream, the metrics.
 */

const h = useNats()


const connection = h.connection

async function tempDir (prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix))
  h.defer(async () => await rm(dir, { recursive: true, force: true }))
  return dir
}

async function replicator (region: string, target: string, namespace: string, extra: Partial<ReplicatorOptions> = {}): Promise<Replicator> {
  const r = await startReplicator(await connection(), { region, target, namespace, ...extra })
  h.defer(async () => await r.close())
  return r
}

/** The region's dead letters once there is exactly one. */
async function oneDeadLetter (nc: NatsConnection, ns: string, region: string): Promise<StoredDeadLetter[]> {
  const jsm = await jetstreamManager(nc)
  return await waitFor(`the dead letter in ${region}`, async () => {
    const l = await listDeadLetters(jsm, names(ns), region)
    return l.length === 1 ? l : undefined
  })
}

/** One replay as a region's API answered it. */
interface Answered {
  /** Its Idempotency-Key: the event id. */
  key: string
  method: string
  url: string
  body: string
  status: number
}

/** A region's copy of the identity API, with the plugin, that records every replay it answers. */
interface Region {
  app: FastifyInstance
  url: string
  answered: Answered[]
}

async function region (name: string, namespace: string, plugin: Partial<RegionsyncPluginOptions> = {}): Promise<Region> {
  const spoolDir = await tempDir('regionsync-spool-')
  const app = await buildIdentityApi({
    region: name,
    regionsync: { region: name, connection: await connection(), signingKey: SIGNING_KEY, namespace, spool: { dir: spoolDir }, ...plugin }
  })
  h.defer(async () => await app.close())
  const answered: Answered[] = []
  app.addHook('onResponse', async (req, reply) => {
    const key = req.headers[IDEMPOTENCY_KEY_HEADER]
    if (typeof key === 'string') answered.push({ key, method: req.method, url: req.url, body: JSON.stringify(req.body), status: reply.statusCode })
  })
  const url = await app.listen({ port: 0, host: '127.0.0.1' })
  return { app, url, answered }
}

/** Regions us and eu of a new namespace, both running the plugin. */
async function usAndEu (): Promise<{ ns: string, us: Region, eu: Region }> {
  const ns = uniqueNamespace()
  return { ns, us: await region('us', ns), eu: await region('eu', ns) }
}

/** The replays a region accepted (2xx), first answer per event id: the order it applied them in. */
function accepted (r: Region): Answered[] {
  const seen = new Set<string>()
  const out: Answered[] = []
  for (const a of r.answered) {
    if (a.status < 200 || a.status > 299 || seen.has(a.key)) continue
    seen.add(a.key)
    out.push(a)
  }
  return out
}

/**
 * Asserts that every event on the stream from another region reached `r` and its handler ran once
 * for each: the plugin counts a replay it ran as "applied" and one it answered from its replay
 * record (a replicator sending an event again) as "duplicate", and the region answered 2xx no more
 * often than those two together.
 */
async function expectAppliedOnce (r: Region, name: string, eventIds: string[]): Promise<void> {
  expect(new Set(accepted(r).map((a) => a.key))).toEqual(new Set(eventIds))
  const applied = await metric(r.app, 'regionsync_replays_received_total', { region: name, outcome: 'applied' })
  const duplicate = await metric(r.app, 'regionsync_replays_received_total', { region: name, outcome: 'duplicate' })
  expect(applied).toBe(eventIds.length)
  expect(r.answered.filter((a) => a.status >= 200 && a.status <= 299)).toHaveLength(applied + duplicate)
}

/** A JSON write over real HTTP; status null when no answer came (connection refused or reset). */
async function send (url: string, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<number | null> {
  try {
    const res = await request(url + path, {
      method: method as 'POST',
      headers: body === undefined ? headers : { 'content-type': 'application/json', ...headers },
      body: body === undefined ? undefined : JSON.stringify(body)
    })
    await res.body.dump()
    return res.statusCode
  } catch {
    return null
  }
}

/** Every event on the namespace's stream, in stream order, with its raw bytes. */
async function streamEvents (nc: NatsConnection, ns: string): Promise<Array<{ event: RegionsyncEvent, data: Uint8Array }>> {
  const messages = await streamMessages(await jetstreamManager(nc), names(ns).eventStream)
  return messages.map((m) => ({ event: decodeEvent(m.data), data: m.data }))
}

async function streamCount (nc: NatsConnection, ns: string): Promise<number> {
  return (await (await jetstreamManager(nc)).streams.info(names(ns).eventStream)).state.messages
}

async function metric (app: FastifyInstance, name: string, labels: Record<string, string>): Promise<number> {
  return await registryValue(app.regionsync.registry, name, labels)
}

const sleep = async (ms: number): Promise<void> => await new Promise((resolve) => setTimeout(resolve, ms))

/** A user as /_state shows it, less the password hash these proofs do not set. */
interface UserFields { id: string, name: string, email: string | null, enabled: boolean }
type UserWrite = { method: 'POST', body: { user: UserFields } } | { method: 'PATCH', body: { user: Partial<Omit<UserFields, 'id'>> } }

/** The i-th write of one user's sequence: its create, then updates that each change something. */
function userWrite (id: string, i: number): UserWrite {
  if (i === 0) return { method: 'POST', body: { user: { id, name: `${id}-0`, email: `${id}-0@example.org`, enabled: true } } }
  const user: Partial<Omit<UserFields, 'id'>> = { name: `${id}-${i}` }
  if (i % 2 === 1) user.email = `${id}-${i}@example.org`
  if (i % 3 === 0) user.enabled = i % 2 === 0
  return { method: 'PATCH', body: { user } }
}

function applyWrite (prev: UserFields | null, id: string, w: UserWrite): UserFields | null {
  if (w.method === 'POST') return { ...w.body.user }
  return prev === null ? null : { ...prev, ...w.body.user, id }
}

/** What one client saw for one user: the state its acknowledged writes make, and the one write whose answer it never got. */
interface ClientView {
  id: string
  acked: UserFields | null
  /** The state if the unanswered write was applied anyway; undefined when every write was answered. */
  ifUnanswered?: UserFields | null
  answered: number
}

/**
 * Writes one user's sequence to `url` until `max` writes or the first write without a 2xx (the
 * client does not know what became of it, so it stops writing that user).
 */
async function writeUser (url: string, id: string, max: number, onAck: () => void = () => {}): Promise<ClientView> {
  const view: ClientView = { id, acked: null, answered: 0 }
  for (let i = 0; i < max; i++) {
    const w = userWrite(id, i)
    const status = await send(url, w.method, w.method === 'POST' ? '/v3/users' : `/v3/users/${id}`, w.body)
    if (status === null || status < 200 || status > 299) {
      view.ifUnanswered = applyWrite(view.acked, id, w)
      break
    }
    view.acked = applyWrite(view.acked, id, w)
    view.answered++
    onAck()
  }
  return view
}

const fieldsOf = (u: IdentityState['users'][number]): UserFields => ({ id: u.id, name: u.name, email: u.email, enabled: u.enabled })

/** Why a region's users do not match what the client saw acknowledged; null when they do. */
function mismatch (s: IdentityState, views: ClientView[]): string | null {
  const have = new Map(s.users.map((u) => [u.id, fieldsOf(u)]))
  for (const id of have.keys()) {
    if (!views.some((v) => v.id === id)) return `unexpected user ${id}`
  }
  for (const v of views) {
    const got = have.get(v.id) ?? null
    const same = (want: UserFields | null | undefined): boolean => JSON.stringify(got) === JSON.stringify(want)
    if (same(v.acked)) continue
    if (v.ifUnanswered !== undefined && same(v.ifUnanswered)) continue
    return `user ${v.id}: has ${JSON.stringify(got)}, client saw ${JSON.stringify(v.acked)} acknowledged`
  }
  return null
}

/** Region us as `node examples/dist/server.js`, with its spool in a temporary directory it keeps across restarts. */
async function sourceProcess (ns: string): Promise<ApiProcess> {
  const port = await freePort()
  const source = new ApiProcess(port, {
    REGION: 'us',
    NATS_URL: h.nats.url,
    REGIONSYNC_SIGNING_KEY: SIGNING_KEY,
    REGIONSYNC_NAMESPACE: ns,
    REGIONSYNC_SPOOL_DIR: join(await tempDir('regionsync-source-'), 'spool')
  })
  h.defer(async () => await source.kill())
  await source.start()
  return source
}

describe('I1: kill -9 of the source API', () => {
  it('every write the client saw answered 2xx reaches the other region, once, across a kill -9 and restart on the same spool', async () => {
    const ns = uniqueNamespace()
    const eu = await region('eu', ns)
    const r = await replicator('eu', eu.url, ns)
    const source = await sourceProcess(ns)

    // Before the kill: 6 users written at once, each in order, up to 25 writes; killed after 60 answers.
    let answered = 0
    let killed: Promise<unknown> | null = null
    const before = await Promise.all(Array.from({ length: 6 }, async (_, k) => await writeUser(source.url, `a${k}`, 25, () => {
      if (++answered === 60) killed = source.kill()
    })))
    expect(killed).not.toBeNull()
    await killed
    // The kill landed mid-stream: some users' sequences were cut short.
    expect(before.some((v) => v.ifUnanswered !== undefined)).toBe(true)

    await source.start()
    const after = await Promise.all(Array.from({ length: 6 }, async (_, k) => await writeUser(source.url, `b${k}`, 25)))
    expect(after.every((v) => v.answered === 25)).toBe(true)
    const views = [...before, ...after]
    expect(views.reduce((n, v) => n + v.answered, 0)).toBeGreaterThanOrEqual(60 + 150)

    await waitFor('eu to hold every acknowledged write', async () => mismatch(await state(eu.url), views) === null && (await r.lag()).pending === 0, 30_000)
    expect(mismatch(await state(eu.url), views)).toBeNull()
    // Every event on the stream, answered or not, reached eu and ran there once.
    await expectAppliedOnce(eu, 'eu', (await streamEvents(await connection(), ns)).map((e) => e.event.id))
  })

  it('writes answered from the spool while NATS is down survive a kill -9 and reach the other region after the restart', async () => {
    const ns = uniqueNamespace()
    const eu = await region('eu', ns)
    const r = await replicator('eu', eu.url, ns)
    const source = await sourceProcess(ns)

    let views: ClientView[]
    await h.nats.kill()
    try {
      views = await Promise.all(Array.from({ length: 4 }, async (_, k) => await writeUser(source.url, `s${k}`, 5)))
      await source.kill()
    } finally {
      await h.nats.restart()
    }
    expect(views.map((v) => v.answered)).toEqual([5, 5, 5, 5])

    await source.start()
    await waitFor('eu to hold every acknowledged write', async () => mismatch(await state(eu.url), views) === null && (await r.lag()).pending === 0, 20_000)
    const events = await streamEvents(await connection(), ns)
    expect(events).toHaveLength(20)
    await expectAppliedOnce(eu, 'eu', events.map((e) => e.event.id))
  })
})

describe('I1: NATS outage', () => {
  it('writes during a 5 s outage are answered 2xx from the spool and reach the other region in order, once; the spool empties', async () => {
    const ns = uniqueNamespace()
    const us = await region('us', ns, { publishTimeoutMs: 500 })
    const eu = await region('eu', ns)
    // A replay in flight when NATS went away may lose its ack or nak with it; JetStream then
    // redelivers it after the ack wait, kept short here so the proof does not wait 30 s for it.
    const r = await replicator('eu', eu.url, ns, { ackWaitMs: 3000 })

    const statuses: Array<number | null> = []
    const sent = new Map<string, string[]>()
    let stopped = false
    const writers = Array.from({ length: 4 }, async (_, k) => {
      const id = `o${k}`
      sent.set(`/v3/users/${id}`, [])
      for (let i = 0; i < 200 && !stopped; i++) {
        const w = userWrite(id, i)
        const status = await send(us.url, w.method, w.method === 'POST' ? '/v3/users' : `/v3/users/${id}`, w.body)
        statuses.push(status)
        if (w.method === 'PATCH') sent.get(`/v3/users/${id}`)!.push(JSON.stringify(w.body))
        await sleep(40)
      }
    })

    await sleep(1000)
    await h.nats.kill()
    const sentBeforeKill = statuses.length
    try {
      await sleep(5000)
    } finally {
      await h.nats.restart()
    }
    expect(us.app.regionsync.spooled).toBeGreaterThan(0)
    await sleep(1000)
    stopped = true
    await Promise.all(writers)

    expect(statuses.length).toBeGreaterThan(sentBeforeKill + 50)
    expect(statuses.filter((s) => s === null || s < 200 || s > 299)).toEqual([])
    expect(await metric(us.app, 'regionsync_events_spooled_total', { region: 'us' })).toBeGreaterThan(50)

    await waitFor('the spool to drain', () => us.app.regionsync.spooled === 0, 20_000)
    expect(await metric(us.app, 'regionsync_spool_events', { region: 'us' })).toBe(0)
    const expected = await state(us.url)
    expect(expected.users).toHaveLength(4)
    await waitFor('eu to match us', async () => JSON.stringify(await state(eu.url)) === JSON.stringify(expected) && (await r.lag()).pending === 0, 30_000)
    const events = await streamEvents(await connection(), ns)
    expect(events).toHaveLength(statuses.length)
    await expectAppliedOnce(eu, 'eu', events.map((e) => e.event.id))
    // Per user, eu ran the updates in the order the client sent them.
    for (const [path, bodies] of sent) {
      expect(accepted(eu).filter((a) => a.method === 'PATCH' && a.url === path).map((a) => a.body)).toEqual(bodies)
    }
  })

  it('with NATS 80 ms away, a spool of 400 drains while the API keeps taking 40 writes a second, and every user\'s writes are on the stream in the order sent', async () => {
    const ns = uniqueNamespace()
    const proxy = await DelayProxy.start({ target: { host: '127.0.0.1', port: h.nats.port }, delayMs: 40 })
    h.defer(async () => await proxy.close())
    const far = await connect(`nats://${proxy.address}`)
    h.defer(async () => { await far.close() })
    const us = await region('us', ns, { connection: far, publishTimeoutMs: 1000 })
    const users = Array.from({ length: 20 }, (_, k) => `far${k}`)
    const sent = new Map<string, string[]>(users.map((id) => [id, []]))
    const next = new Map<string, number>(users.map((id) => [id, 0]))
    const write = async (id: string): Promise<void> => {
      const i = next.get(id) as number
      next.set(id, i + 1)
      const w = userWrite(id, i)
      sent.get(id)?.push(JSON.stringify(w.body))
      expect(await send(us.url, w.method, w.method === 'POST' ? '/v3/users' : `/v3/users/${id}`, w.body)).toBeLessThan(300)
    }

    // 400 writes answered from the spool while NATS is down.
    await h.nats.kill()
    try {
      for (let round = 0; round < 20; round++) await Promise.all(users.map(write))
    } finally {
      await h.nats.restart()
    }
    expect(us.app.regionsync.spooled).toBe(400)
    // Writes keep coming at 40 a second, each joining the spool while it drains. One event per
    // round trip (12 a second at 80 ms) would fall further behind them every second.
    let writing = true
    const writer = (async () => {
      for (let n = 0; writing; n++) {
        await write(users[n % users.length] as string)
        await sleep(25)
      }
    })()
    try {
      // Down to what is on its way: a write arriving meanwhile joins the spool behind the events
      // still in flight, so it holds a few (40 a second x 80 ms) until the writes stop.
      await waitFor('the spool to drain while writes go on', () => us.app.regionsync.spooled < 20, 30_000)
    } finally {
      writing = false
      await writer
    }
    await waitFor('the spool to empty once the writes stop', () => us.app.regionsync.spooled === 0)

    const events = await streamEvents(await connection(), ns)
    expect(events).toHaveLength([...next.values()].reduce((a, b) => a + b, 0))
    for (const id of users) {
      const onStream = events.filter((e) => e.event.resource === `/v3/users/${id}`).map((e) => e.event.body)
      expect(onStream, `the writes of ${id}`).toEqual(sent.get(id))
    }
  })

  it('a spool left by an app closed while NATS was down is published when a new app starts on it', async () => {
    const ns = uniqueNamespace()
    const spoolDir = await tempDir('regionsync-spool-')
    let handled = 0
    const build = async (): Promise<FastifyInstance> => {
      const app = Fastify({ logger: false })
      h.defer(async () => await app.close())
      await app.register(regionsync, { region: 'us', connection: await connection(), signingKey: SIGNING_KEY, namespace: ns, spool: { dir: spoolDir }, publishTimeoutMs: 500 })
      app.post('/v3/things', async (_req, reply) => { handled++; return await reply.code(201).send({ id: `t${handled}` }) })
      return app
    }
    const first = await build()
    await first.ready()

    await h.nats.kill()
    let res
    try {
      res = await first.inject({ method: 'POST', url: '/v3/things', headers: { 'content-type': 'application/json' }, payload: '{"name":"kept"}' })
      expect(first.regionsync.spooled).toBe(1)
      await first.close()
    } finally {
      await h.nats.restart()
    }
    expect(res.statusCode).toBe(201)

    const second = await build()
    await second.ready()
    const nc = await connection()
    await waitFor('the old spool on the stream', async () => second.regionsync.spooled === 0 && (await streamCount(nc, ns)) === 1, 15_000)
    const [only] = await streamEvents(nc, ns)
    expect(only?.event.resource).toBe('/v3/things/t1')
    expect(only?.event.body).toBe('{"name":"kept"}')
    expect(await metric(second, 'regionsync_spool_events', { region: 'us' })).toBe(0)
  })
})

describe('I9: the body as the client sent it', () => {
  it('a handler that hashes the password in place: the event carries the original, and eu ends with the same hash as us', async () => {
    const { ns, us, eu } = await usAndEu()
    const r = await replicator('eu', eu.url, ns)

    expect(await send(us.url, 'POST', '/v3/users', { user: { id: 'ann', name: 'ann', password: 'hunter2' } })).toBe(201)
    const nc = await connection()
    const [only] = await streamEvents(nc, ns)
    expect(JSON.parse(eventBody(only!.event)!.toString())).toEqual({ user: { id: 'ann', name: 'ann', password: 'hunter2' } })

    const sha = createHash('sha256').update('hunter2').digest('hex')
    expect((await state(us.url)).users[0]?.passwordHash).toBe(sha)
    await waitFor('the user in eu', async () => (await state(eu.url)).users.length === 1 && (await r.lag()).pending === 0)
    expect(await state(eu.url)).toEqual(await state(us.url))
  })
})

describe('non-JSON bodies', () => {
  it('binary, form and bodyless writes reach the target byte for byte', async () => {
    const ns = uniqueNamespace()
    const source = Fastify({ logger: false })
    h.defer(async () => await source.close())
    await source.register(regionsync, { region: 'us', connection: await connection(), signingKey: SIGNING_KEY, namespace: ns, spool: { dir: await tempDir('regionsync-spool-') } })
    source.addContentTypeParser('application/octet-stream', { parseAs: 'buffer' }, (_req, body, done) => done(null, body))
    source.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_req, body, done) => done(null, Object.fromEntries(new URLSearchParams(body as string))))
    source.put('/v3/blobs/:id', async () => ({ ok: true }))
    source.post('/v3/forms', async (_req, reply) => await reply.code(201).send({ id: 'f1' }))
    source.post('/v3/users/:id/disable', async () => ({ ok: true }))
    const sourceUrl = await source.listen({ port: 0, host: '127.0.0.1' })

    const received: Array<{ method: string, url: string, contentType: string | undefined, body: Buffer | null }> = []
    const target = Fastify({ logger: false })
    h.defer(async () => await target.close())
    for (const type of ['application/octet-stream', 'application/x-www-form-urlencoded']) {
      target.addContentTypeParser(type, { parseAs: 'buffer' }, (_req, body, done) => done(null, body))
    }
    target.addHook('preHandler', async (req) => {
      received.push({ method: req.method, url: req.url, contentType: req.headers['content-type'], body: Buffer.isBuffer(req.body) ? req.body : null })
    })
    target.put('/v3/blobs/:id', async () => ({ ok: true }))
    target.post('/v3/forms', async (_req, reply) => await reply.code(201).send({ id: 'f1' }))
    target.post('/v3/users/:id/disable', async () => ({ ok: true }))
    const targetUrl = await target.listen({ port: 0, host: '127.0.0.1' })
    const r = await replicator('eu', targetUrl, ns)

    const blob = Buffer.concat([Buffer.from([0xff, 0xfe, 0x00, 0x80, 0xc3, 0x28, 0xed, 0xa0, 0x80, 0x0d, 0x0a]), randomBytes(4096)])
    const form = 'name=Zo%C3%AB+K&tags=a&tags=b&empty=&note=50%25+off'
    const formType = 'application/x-www-form-urlencoded; charset=utf-8'
    const put = await request(`${sourceUrl}/v3/blobs/b1`, { method: 'PUT', headers: { 'content-type': 'application/octet-stream' }, body: blob })
    await put.body.dump()
    expect(put.statusCode).toBe(200)
    const post = await request(`${sourceUrl}/v3/forms`, { method: 'POST', headers: { 'content-type': formType }, body: form })
    await post.body.dump()
    expect(post.statusCode).toBe(201)
    expect(await send(sourceUrl, 'POST', '/v3/users/u1/disable')).toBe(200)

    await waitFor('three replays at the target', async () => received.length === 3 && (await r.lag()).pending === 0)
    const byUrl = new Map(received.map((x) => [x.url, x]))
    expect(byUrl.get('/v3/blobs/b1')).toMatchObject({ method: 'PUT', contentType: 'application/octet-stream' })
    expect(byUrl.get('/v3/blobs/b1')?.body?.equals(blob)).toBe(true)
    expect(byUrl.get('/v3/forms')).toMatchObject({ method: 'POST', contentType: formType })
    expect(byUrl.get('/v3/forms')?.body?.equals(Buffer.from(form))).toBe(true)
    expect(byUrl.get('/v3/users/u1/disable')).toMatchObject({ method: 'POST', contentType: undefined, body: null })
  })
})

describe('I6: active-active', () => {
  it('writes in either region reach the other once and never come back', async () => {
    const { ns, us, eu } = await usAndEu()
    const toEu = await replicator('eu', eu.url, ns)
    const toUs = await replicator('us', us.url, ns)

    let writes = 0
    const regions: Array<[string, Region]> = [['us', us], ['eu', eu]]
    const caughtUp = async (): Promise<boolean> =>
      (await toEu.lag()).pending === 0 && (await toUs.lag()).pending === 0 &&
      JSON.stringify(await state(us.url)) === JSON.stringify(await state(eu.url))
    await Promise.all(regions.map(async ([name, at]) => {
      const views = await Promise.all(Array.from({ length: 3 }, async (_, k) => await writeUser(at.url, `${name}${k}`, 8, () => { writes++ })))
      expect(views.map((v) => v.answered)).toEqual([8, 8, 8])
      expect(await send(at.url, 'POST', '/v3/projects', { project: { id: `p-${name}`, name: `ops ${name}` } })).toBe(201)
      writes++
    }))
    await waitFor('both regions to catch up', caughtUp)
    // Each region now updates a user the other created: the update goes back the other way, once.
    expect(await send(eu.url, 'PATCH', '/v3/users/us0', { user: { name: 'renamed in eu' } })).toBe(200)
    expect(await send(us.url, 'PATCH', '/v3/users/eu0', { user: { name: 'renamed in us' } })).toBe(200)
    writes += 2
    expect(writes).toBe(2 * (3 * 8 + 1 + 1))
    await waitFor('both regions to catch up again', caughtUp)
    const final = await state(us.url)
    expect(final.users).toHaveLength(6)
    expect(final.users.filter((u) => u.name.startsWith('renamed')).map((u) => `${u.id}: ${u.name}`)).toEqual(['eu0: renamed in us', 'us0: renamed in eu'])
    expect(final.projects).toHaveLength(2)
    expect(await state(eu.url)).toEqual(final)
    // No replay was published again: the stream holds the clients' writes and nothing else.
    const events = (await streamEvents(await connection(), ns)).map((e) => e.event)
    expect(events).toHaveLength(writes)
    await expectAppliedOnce(eu, 'eu', events.filter((e) => e.origin === 'us').map((e) => e.id))
    await expectAppliedOnce(us, 'us', events.filter((e) => e.origin === 'eu').map((e) => e.id))
    expect(await metric(us.app, 'regionsync_events_published_total', { region: 'us' })).toBe(writes / 2)
    expect(await metric(eu.app, 'regionsync_events_published_total', { region: 'eu' })).toBe(writes / 2)
  })
})

describe('I1: spool full while NATS is down', () => {
  async function spoolFullApp (options: Partial<RegionsyncPluginOptions>): Promise<{ app: FastifyInstance, handled: () => number }> {
    let handled = 0
    const app = Fastify({ logger: false })
    h.defer(async () => await app.close())
    await app.register(regionsync, {
      region: 'us', connection: await connection(), signingKey: SIGNING_KEY, namespace: uniqueNamespace(),
      spool: { dir: await tempDir('regionsync-spool-'), maxEvents: 3 }, publishTimeoutMs: 500, ...options
    })
    app.post('/v3/things', async (_req, reply) => { handled++; return await reply.code(201).send({ id: `t${handled}` }) })
    await app.ready()
    return { app, handled: () => handled }
  }
  const write = async (app: FastifyInstance) => await app.inject({ method: 'POST', url: '/v3/things', headers: { 'content-type': 'application/json' }, payload: '{}' })

  it('refuses the write that does not fit with 503 before its handler, counts it, and takes writes again once drained', async () => {
    const { app, handled } = await spoolFullApp({})
    await h.nats.kill()
    let fits, refused
    try {
      fits = [await write(app), await write(app), await write(app)]
      refused = await write(app)
    } finally {
      await h.nats.restart()
    }
    expect(fits.map((r) => r.statusCode)).toEqual([201, 201, 201])
    expect(refused.statusCode).toBe(503)
    expect(refused.json()).toMatchObject({ statusCode: 503, code: 'REGIONSYNC_E_UNAVAILABLE' })
    expect(handled()).toBe(3)
    expect(await metric(app, 'regionsync_writes_refused_total', { region: 'us', reason: 'spool-full' })).toBe(1)

    await waitFor('the spool to drain', () => app.regionsync.spooled === 0, 15_000)
    const again = await write(app)
    expect(again.statusCode).toBe(201)
    expect(handled()).toBe(4)
    expect(await metric(app, 'regionsync_events_published_total', { region: 'us' })).toBe(4)
  })

  it('with whenSpoolFull allow-unreplicated, lets the write through and counts it as unreplicated', async () => {
    const { app, handled } = await spoolFullApp({ whenSpoolFull: 'allow-unreplicated' })
    await h.nats.kill()
    let statuses
    try {
      statuses = [await write(app), await write(app), await write(app), await write(app)].map((r) => r.statusCode)
    } finally {
      await h.nats.restart()
    }
    expect(statuses).toEqual([201, 201, 201, 201])
    expect(handled()).toBe(4)
    expect(await metric(app, 'regionsync_unreplicated_writes_total', { region: 'us' })).toBe(1)
    expect(await metric(app, 'regionsync_writes_refused_total', { region: 'us', reason: 'spool-full' })).toBe(0)
    await waitFor('the spool to drain', () => app.regionsync.spooled === 0, 15_000)
    expect(await metric(app, 'regionsync_events_published_total', { region: 'us' })).toBe(3)
  })
})

describe('I4: replay guard', () => {
  async function guarded (handler: () => Promise<void> = async () => {}): Promise<{ app: FastifyInstance, url: string, nc: NatsConnection, ns: string, handled: () => number }> {
    const ns = uniqueNamespace()
    let handled = 0
    const app = Fastify({ logger: false })
    h.defer(async () => await app.close())
    const nc = await connection()
    await app.register(regionsync, { region: 'eu', connection: nc, signingKey: SIGNING_KEY, namespace: ns, spool: { dir: await tempDir('regionsync-spool-') } })
    app.post('/v3/users', async (_req, reply) => {
      handled++
      await handler()
      return await reply.code(201).send({ user: { id: 'u7', applied: handled } })
    })
    const url = await app.listen({ port: 0, host: '127.0.0.1' })
    return { app, url, nc, ns, handled: () => handled }
  }

  /** A function that sends the same genuine replay (one event id) each time it is called, as a replicator would. */
  function replayer (url: string): () => Promise<{ status: number, type: unknown, body: string }> {
    const body = '{"user":{"id":"u7","name":"ann"}}'
    const eventId = `evt-${randomBytes(6).toString('hex')}`
    return async () => {
      const signature = createSigner(SIGNING_KEY).signReplay({ eventId, origin: 'us', method: 'POST', body: Buffer.from(body), seq: null, resource: '' })
      const headers = { 'content-type': 'application/json', [IDEMPOTENCY_KEY_HEADER]: eventId, [REPLAY_ORIGIN_HEADER]: 'us', [REPLAY_SIGNATURE_HEADER]: signature }
      const res = await request(`${url}/v3/users`, { method: 'POST', headers, body })
      return { status: res.statusCode, type: res.headers['content-type'], body: await res.body.text() }
    }
  }

  it('answers the same genuine replay a second time as the first, without running the handler again', async () => {
    const s = await guarded()
    const replay = replayer(s.url)
    const first = await replay()
    const second = await replay()
    expect(s.handled()).toBe(1)
    expect(first).toEqual({ status: 201, type: 'application/json; charset=utf-8', body: '{"user":{"id":"u7","applied":1}}' })
    expect(second).toEqual(first)
    expect(await metric(s.app, 'regionsync_replays_received_total', { region: 'eu', outcome: 'duplicate' })).toBe(1)
    // A replay is never published again.
    expect(await streamCount(s.nc, s.ns)).toBe(0)
  })

  it('a replay applied as NATS goes away is answered once its record holds, and is not run again meanwhile or after', async () => {
    let down = false
    const s = await guarded(async () => {
      if (down) return
      down = true
      await h.nats.kill()
    })
    const replay = replayer(s.url)
    let first, during
    let restarted = false
    try {
      const pending = replay()
      await waitFor('the handler to run with NATS gone', () => down && s.handled() === 1)
      // The same event again while the first is still waiting on its record (a replicator that timed out).
      during = await replay()
      await sleep(500)
      await h.nats.restart()
      restarted = true
      first = await pending
    } finally {
      if (!restarted) await h.nats.restart()
    }
    // With JetStream gone the guard cannot take a claim, so nothing runs: 503, retried after Retry-After.
    expect(during.status).toBe(503)
    expect(first).toEqual({ status: 201, type: 'application/json; charset=utf-8', body: '{"user":{"id":"u7","applied":1}}' })
    const after = await replay()
    expect(after).toEqual(first)
    expect(s.handled()).toBe(1)
  })
})

/** A source API with the plugin on `ns`, sealing what `sealing` asks, whose `POST path` answers 201 with `answer`. */
async function sealingSource (nc: NatsConnection, ns: string, sealing: Partial<RegionsyncPluginOptions>, path: string, answer: unknown): Promise<FastifyInstance> {
  const source = Fastify({ logger: false })
  h.defer(async () => await source.close())
  await source.register(regionsync, {
    region: 'us', connection: nc, signingKey: SIGNING_KEY, namespace: ns, spool: { dir: await tempDir('regionsync-spool-') }, ...sealing
  })
  source.post(path, async (_req, reply) => await reply.code(201).send(answer))
  await source.ready()
  return source
}

/**
 * Replicates the namespace's one sealed event to eu, whose replicator has the key (`euOptions`),
 * and to ap, whose replicator has none: ap dead-letters it undecryptable, sends nothing and keeps
 * no `secret` in the letter. Returns eu's replay of it.
 */
async function replayedWithKeyOnlyInEu (nc: NatsConnection, ns: string, eventId: string, secret: string, euOptions: Partial<ReplicatorOptions>): Promise<ReceivedRequest> {
  const eu = await TestTarget.start()
  h.defer(async () => await eu.close())
  const ap = await TestTarget.start()
  h.defer(async () => await ap.close())
  await replicator('eu', eu.url, ns, euOptions)
  await replicator('ap', ap.url, ns)

  await waitFor('the replay in eu', () => eu.withKey(eventId).length === 1)
  const letters = await oneDeadLetter(nc, ns, 'ap')
  expect(letters[0]).toMatchObject({ reason: 'undecryptable', eventId })
  expect(ap.requests).toHaveLength(0)
  expect(JSON.stringify(letters)).not.toContain(secret)
  return eu.withKey(eventId)[0]!
}

describe('I5: forwarded headers', () => {
  it('travel encrypted: the stream never shows them, a replicator with the key replays them, one without dead-letters the event', async () => {
    const ns = uniqueNamespace()
    const encryptionKey = randomBytes(32).toString('hex')
    const secret = `caller-token-${randomBytes(8).toString('hex')}`
    const nc = await connection()
    const source = await sealingSource(nc, ns, { forwardHeaders: ['authorization'], encryptionKey }, '/v3/things', { id: 't1' })
    const res = await source.inject({ method: 'POST', url: '/v3/things', headers: { 'content-type': 'application/json', authorization: `Bearer ${secret}` }, payload: '{"name":"x"}' })
    expect(res.statusCode).toBe(201)

    const [only] = await streamEvents(nc, ns)
    const bytes = Buffer.from(only!.data)
    for (const form of [secret, Buffer.from(secret).toString('base64'), Buffer.from(secret).toString('base64url'), Buffer.from(secret).toString('hex')]) {
      expect(bytes.includes(form)).toBe(false)
    }
    expect(only!.event.sealedHeaders).not.toBeNull()

    const replayed = await replayedWithKeyOnlyInEu(nc, ns, only!.event.id, secret, { encryptionKey, targetToken: 'eu-region-token' })
    expect(replayed.headers.authorization).toBe(`Bearer ${secret}`)
  })
})

describe('I5: sealed bodies', () => {
  it('travel encrypted: the stream and the dead letter never show the password, a replicator with the key replays the body as sent', async () => {
    const ns = uniqueNamespace()
    const encryptionKey = randomBytes(32).toString('hex')
    const password = `pw-${randomBytes(8).toString('hex')}`
    const nc = await connection()
    const source = await sealingSource(nc, ns, { sealBodies: true, encryptionKey }, '/v3/users', { user: { id: 'u1' } })
    const sent = `{"user":{"name":"ann","password":"${password}"}}`
    expect((await source.inject({ method: 'POST', url: '/v3/users', headers: { 'content-type': 'application/json' }, payload: sent })).statusCode).toBe(201)

    const [only] = await streamEvents(nc, ns)
    expect(Buffer.from(only!.data).includes(password)).toBe(false)
    expect(only!.event.bodyEncoding).toBe('sealed')

    const replayed = await replayedWithKeyOnlyInEu(nc, ns, only!.event.id, password, { encryptionKey })
    // The create's id injected as usual, the rest of the body as the client sent it.
    expect(JSON.parse(replayed.body.toString())).toEqual({ user: { id: 'u1', name: 'ann', password } })
  })
})


describe('publisher: an API that starts while NATS is down', () => {
  it('registers and serves, spools, and once NATS is back every write it acknowledged, before and after a restart in the outage, reaches the other region', async () => {
    const ns = uniqueNamespace()
    const spoolDir = await mkdtemp(join(tmpdir(), 'regionsync-spool-'))
    h.defer(async () => await rm(spoolDir, { recursive: true, force: true }))
    const acknowledged: string[] = []
    const api = async (spool: RegionsyncPluginOptions['spool'] = { dir: spoolDir }): Promise<FastifyInstance> => {
      const app = Fastify({ logger: false }) as unknown as FastifyInstance
      await app.register(regionsync, { region: 'us', nats: { servers: h.nats.url }, signingKey: SIGNING_KEY, namespace: ns, spool })
      app.post('/v3/things', async (_req, reply) => await reply.code(201).send({ id: randomBytes(8).toString('hex') }))
      await app.ready()
      return app
    }
    const write = async (app: FastifyInstance, name: string): Promise<void> => {
      const res = await app.inject({ method: 'POST', url: '/v3/things', headers: { 'content-type': 'application/json' }, payload: JSON.stringify({ name }) })
      if (res.statusCode === 201) acknowledged.push(name)
    }

    const first = await api()
    expect(first.regionsync.connected).toBe(true)
    await write(first, 'before-outage')
    await h.nats.kill()
    try {
      await write(first, 'during-outage-1')
      await first.close()
      // Restarted during the outage: it registers, serves and spools.
      const second = await api()
      h.defer(async () => await second.close())
      expect(second.regionsync.connected).toBe(false)
      await write(second, 'after-restart-1')
      await write(second, 'after-restart-2')
      // Without a spool there is nowhere to keep a write: the register fails, naming the option.
      const noSpool = await api(false).then(() => null, (err: unknown) => err)
      expect(noSpool).toMatchObject({ code: 'REGIONSYNC_E_INVALID_OPTION', option: 'nats.servers' })
      expect(String((noSpool as Error).message).split('\n')).toHaveLength(1)
      expect(second.regionsync.spooled).toBe(3)
    } finally {
      await h.nats.restart()
    }
    expect(acknowledged).toEqual(['before-outage', 'during-outage-1', 'after-restart-1', 'after-restart-2'])

    const target = await TestTarget.start()
    h.defer(async () => await target.close())
    const r = await startReplicator(await h.connection(), { region: 'eu', target: target.url, namespace: ns })
    h.defer(async () => await r.close())
    await waitFor('every acknowledged write at the other region', () => {
      const got = target.requests.map((q) => (JSON.parse(q.body.toString()) as { name: string }).name)
      return acknowledged.every((name) => got.includes(name))
    }, 30_000)
  })
})
