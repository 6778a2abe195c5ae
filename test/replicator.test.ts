import { randomBytes } from 'node:crypto'
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream'
import { Kvm } from '@nats-io/kv'
import { createSigner, encodeEvent, names, partitionOf, regionLag, type RegionsyncEvent } from '@regionsync/shared'
import { Replicator, listDeadLetters, startMetricsServer, type ReplicatorOptions, type StoredDeadLetter } from '@regionsync/replicator'
import { request } from 'undici'
import { describe, expect, it } from 'vitest'
import { EventPublisher, metricValue, newEvent, registryValue } from './helpers/events.js'
import { SIGNING_KEY, silentLogger, uniqueNamespace, waitFor, startReplicator } from './helpers/fixtures.js'
import { freePort } from './helpers/nats-server.js'
import { TestTarget, type Script } from './helpers/target.js'
import { useNats } from './helpers/harness.js'

const REGION = 'eu'
const TOKEN = 'eu-region-secret'
const OTHER_KEY = randomBytes(32).toString('hex')

const h = useNats()


const connection = h.connection

async function target (script?: Script, port?: number): Promise<TestTarget> {
  const t = await TestTarget.start({ ...(script !== undefined ? { script } : {}), ...(port !== undefined ? { port } : {}) })
  h.defer(async () => await t.close())
  return t
}

async function replicator (namespace: string, targetUrl: string, extra: Partial<ReplicatorOptions> = {}): Promise<Replicator> {
  const r = await startReplicator(await connection(), { region: REGION, namespace, target: targetUrl, targetToken: TOKEN, ...extra })
  h.defer(async () => await r.close())
  return r
}

interface Setup {
  ns: string
  target: TestTarget
  r: Replicator
  pub: EventPublisher
  jsm: JetStreamManager
}

/** A scripted target, one replicator of region "eu" applying to it, and a publisher. */
async function setup (script?: Script, extra: Partial<ReplicatorOptions> = {}): Promise<Setup> {
  const ns = uniqueNamespace()
  const t = await target(script)
  const r = await replicator(ns, t.url, extra)
  const nc = await connection()
  return { ns, target: t, r, pub: new EventPublisher(nc, ns, r.partitions, SIGNING_KEY), jsm: await jetstreamManager(nc) }
}

async function metric (r: Replicator, name: string, labels: Record<string, string> = {}): Promise<number> {
  return await registryValue(r.metrics.registry, name, { region: REGION, ...labels })
}

async function pending (s: Setup): Promise<number> {
  return (await regionLag(s.jsm, names(s.ns), REGION, s.r.partitions)).pending
}

async function deadLetters (s: Setup): Promise<StoredDeadLetter[]> {
  return await listDeadLetters(s.jsm, names(s.ns), REGION)
}

/** Publishes a good event on `resource` and waits until the target has it: everything published before it on that partition has been handled. */
async function sentinel (s: Setup, resource: string): Promise<RegionsyncEvent> {
  const event = newEvent({ resource, path: '/v3/sentinel', body: '{"sentinel":true}' })
  await s.pub.publish(event)
  await waitFor('the sentinel to reach the target', () => s.target.withKey(event.id).length === 1)
  return event
}

describe('applying events', () => {
  it('a 2xx is applied once, with the replay headers, the region credential and the body byte for byte', async () => {
    const s = await setup()
    const json = newEvent({ body: '{"user":{"name":"ada","password":"pw"}}', contentType: 'application/json; charset=utf-8', query: 'async=false' })
    const binary = newEvent({ path: '/v3/blobs', resource: 'blobs', contentType: 'application/octet-stream', body: randomBytes(300) })
    await s.pub.publish(json)
    await s.pub.publish(binary)

    await waitFor('both events applied', async () => (await s.r.status()).applied === 2)
    await waitFor('pending to reach 0', async () => (await pending(s)) === 0)
    expect(s.target.requests).toHaveLength(2)

    const [req] = s.target.withKey(json.id)
    expect(req).toBeDefined()
    expect(req!.method).toBe('POST')
    expect(req!.path).toBe('/v3/users?async=false')
    expect(req!.headers['x-regionsync-origin']).toBe('us')
    expect(req!.headers.authorization).toBe(`Bearer ${TOKEN}`)
    expect(req!.headers['content-type']).toBe('application/json; charset=utf-8')
    expect(req!.body.toString('utf8')).toBe('{"user":{"name":"ada","password":"pw"}}')
    const identity = { eventId: json.id, origin: 'us', method: 'POST', body: req!.body, seq: Number(req!.headers['x-regionsync-seq']), resource: json.resource }
    const signature = req!.headers['x-regionsync-signature'] as string
    expect(createSigner(SIGNING_KEY).verifyReplay(identity, signature)).toBe(true)
    expect(createSigner(OTHER_KEY).verifyReplay(identity, signature)).toBe(false)

    const [bin] = s.target.withKey(binary.id)
    expect(bin!.path).toBe('/v3/blobs')
    expect(bin!.headers['content-type']).toBe('application/octet-stream')
    expect(bin!.body.equals(Buffer.from(binary.body!, 'base64'))).toBe(true)

    expect(await metric(s.r, 'regionsync_events_applied_total')).toBe(2)
    await waitFor('/status to show pending 0', async () => (await s.r.status()).pending === 0)
    expect(await deadLetters(s)).toEqual([])
  })

  it('a replay carries an id the source assigned: injected into the JSON body, or the create mapped to a PUT (I8)', async () => {
    const s = await setup()
    const inject = newEvent({ resource: 'users/abc', created: { id: 'abc', field: 'user.id', mode: 'inject' } })
    const put = newEvent({ resource: 'users/def', body: '{"user":{"name":"y"}}', created: { id: 'def', field: 'user.id', mode: 'put' } })
    await s.pub.publish(inject)
    await s.pub.publish(put)
    await waitFor('both creates applied', () => s.target.requests.length === 2)

    const [injected] = s.target.withKey(inject.id)
    expect(injected!.method).toBe('POST')
    expect(injected!.path).toBe('/v3/users')
    expect(JSON.parse(injected!.body.toString('utf8'))).toEqual({ user: { name: 'x', id: 'abc' } })
    // The signature covers the body the target actually got, so the receiving plugin accepts it.
    expect(createSigner(SIGNING_KEY).verifyReplay({ eventId: inject.id, origin: 'us', method: 'POST', body: injected!.body, seq: Number(injected!.headers['x-regionsync-seq']), resource: inject.resource },
      injected!.headers['x-regionsync-signature'] as string)).toBe(true)

    const [asPut] = s.target.withKey(put.id)
    expect(asPut!.method).toBe('PUT')
    expect(asPut!.path).toBe('/v3/users/def')
    expect(asPut!.body.toString('utf8')).toBe('{"user":{"name":"y"}}')
    expect(createSigner(SIGNING_KEY).verifyReplay({ eventId: put.id, origin: 'us', method: 'PUT', body: asPut!.body, seq: Number(asPut!.headers['x-regionsync-seq']), resource: put.resource },
      asPut!.headers['x-regionsync-signature'] as string)).toBe(true)
  })
})

describe('retries', () => {
  it('a target answering 503 twice then 200 gets the event applied once in the end', async () => {
    const s = await setup((_req, i) => ({ status: i < 2 ? 503 : 200 }))
    const event = newEvent()
    await s.pub.publish(event)

    await waitFor('the event applied', async () => (await s.r.status()).applied === 1)
    await waitFor('pending to reach 0', async () => (await pending(s)) === 0)
    expect(s.target.requests).toHaveLength(3)
    expect(s.target.withKey(event.id)).toHaveLength(3)
    expect(await metric(s.r, 'regionsync_apply_retries_total')).toBeGreaterThanOrEqual(2)
    expect(await metric(s.r, 'regionsync_events_applied_total')).toBe(1)
    expect(await deadLetters(s)).toEqual([])
  })

  it('429 with Retry-After: 1 waits about a second before the next attempt', async () => {
    const s = await setup((_req, i) => i === 0 ? { status: 429, headers: { 'retry-after': '1' } } : { status: 200 })
    await s.pub.publish(newEvent())

    await waitFor('the second attempt', () => s.target.requests.length === 2)
    const [first, second] = s.target.requests
    expect(second!.receivedAt - first!.receivedAt).toBeGreaterThanOrEqual(900)
    await waitFor('the event applied', async () => (await s.r.status()).applied === 1)
  })

  it('a target that refuses connections and then comes up on that port gets every event, none lost', async () => {
    const ns = uniqueNamespace()
    const port = await freePort()
    const r = await replicator(ns, `http://127.0.0.1:${port}`)
    const pub = new EventPublisher(await connection(), ns, r.partitions, SIGNING_KEY)
    const events = [newEvent({ resource: 'users/1' }), newEvent({ resource: 'users/2' }), newEvent({ resource: 'projects/1', path: '/v3/projects' })]
    for (const e of events) await pub.publish(e)

    await waitFor('refused attempts to be retried', async () => await metric(r, 'regionsync_apply_retries_total') >= 3)
    expect((await r.status()).applied).toBe(0)
    const t = await target(undefined, port)

    await waitFor('every event applied', async () => (await r.status()).applied === 3)
    await waitFor('pending to reach 0', async () => (await r.status()).pending === 0)
    for (const e of events) expect(t.withKey(e.id)).toHaveLength(1)
    expect(t.requests).toHaveLength(3)
  })
})

describe('dead letters', () => {
  it('a 422 is dead-lettered with its status and body excerpt, and the next event of the same resource still applies', async () => {
    let rejectedId = ''
    const s = await setup((req) => req.headers['idempotency-key'] === rejectedId
      ? { status: 422, body: '{"error":"user.name must not be empty"}' }
      : { status: 200 })
    const rejected = newEvent({ resource: 'users/7', path: '/v3/users/7', method: 'PATCH', body: '{"user":{"name":""}}' })
    rejectedId = rejected.id
    const next = newEvent({ resource: 'users/7', path: '/v3/users/7', method: 'PATCH', body: '{"user":{"name":"ok"}}' })
    await s.pub.publish(rejected)
    await s.pub.publish(next)

    await waitFor('the next event applied', () => s.target.withKey(next.id).length === 1)
    expect(s.target.withKey(rejected.id)).toHaveLength(1)
    const letters = await waitFor('the dead letter', async () => { const l = await deadLetters(s); return l.length === 1 ? l : undefined })
    expect(letters[0]).toMatchObject({
      region: REGION, reason: 'rejected', status: 422, eventId: rejected.id, resource: 'users/7', method: 'PATCH', path: '/v3/users/7'
    })
    expect(letters[0]!.excerpt).toContain('user.name must not be empty')
    expect(await metric(s.r, 'regionsync_dead_letters_total', { reason: 'rejected' })).toBe(1)
    expect(await metric(s.r, 'regionsync_apply_retries_total')).toBe(0)
    await waitFor('pending to reach 0', async () => (await pending(s)) === 0)
    expect((await s.r.status()).deadLetters).toBe(1)
  })

  it('a DELETE answered 404 and a create answered 409 count as applied', async () => {
    const s = await setup((req) => ({ status: req.method === 'DELETE' ? 404 : 409, body: '{"error":"whatever"}' }))
    const del = newEvent({ method: 'DELETE', path: '/v3/users/1', resource: 'users/1', body: null, contentType: null })
    const create = newEvent({ resource: 'users/2' })
    await s.pub.publish(del)
    await s.pub.publish(create)

    await waitFor('both counted as applied', async () => (await s.r.status()).applied === 2)
    await waitFor('pending to reach 0', async () => (await pending(s)) === 0)
    expect(s.target.withKey(del.id)).toHaveLength(1)
    expect(s.target.withKey(create.id)).toHaveLength(1)
    expect(await deadLetters(s)).toEqual([])
    expect(await metric(s.r, 'regionsync_events_applied_total')).toBe(2)
    expect(await metric(s.r, 'regionsync_dead_letters_total', { reason: 'rejected' })).toBe(0)
  })

  it('malformed events are dead-lettered as malformed, signed or not, and never reach the target', async () => {
    const s = await setup()
    const resource = 'users/1'
    const good = newEvent({ resource })
    const { path: _path, ...missingPath } = good
    await s.pub.publishRaw(Buffer.from('{"v":1,"id":'), { resource })
    await s.pub.publishRaw(Buffer.from('not json at all'), { resource, signWith: null })
    await s.pub.publishRaw(Buffer.from(JSON.stringify({ ...good, v: 2 })), { resource })
    await s.pub.publishRaw(Buffer.from(JSON.stringify(missingPath)), { resource })
    await sentinel(s, resource)

    expect(s.target.requests).toHaveLength(1)
    const letters = await waitFor('4 dead letters', async () => { const l = await deadLetters(s); return l.length === 4 ? l : undefined })
    expect(letters.map((l) => l.reason)).toEqual(['malformed', 'malformed', 'malformed', 'malformed'])
    expect(letters[2]!.detail).toContain('version')
    expect(letters[3]!.detail).toContain('path')
    expect(await metric(s.r, 'regionsync_dead_letters_total', { reason: 'malformed' })).toBe(4)
    await waitFor('pending to reach 0', async () => (await pending(s)) === 0)
  })

  it('unsigned, wrongly signed and tampered events are dead-lettered as bad-signature and never reach the target', async () => {
    const s = await setup()
    const resource = 'users/1'
    const unsigned = newEvent({ resource })
    const wrongKey = newEvent({ resource })
    const tampered = newEvent({ resource, path: '/v3/users/1', method: 'DELETE', body: null })
    await s.pub.publish(unsigned, { signWith: null })
    await s.pub.publish(wrongKey, { signWith: OTHER_KEY })
    const original = encodeEvent(tampered)
    await s.pub.publishRaw(encodeEvent({ ...tampered, path: '/v3/users/2' }), {
      resource, msgID: tampered.id, signature: createSigner(SIGNING_KEY).signEvent(original)
    })
    await sentinel(s, resource)

    expect(s.target.requests).toHaveLength(1)
    const letters = await waitFor('3 dead letters', async () => { const l = await deadLetters(s); return l.length === 3 ? l : undefined })
    expect(letters.map((l) => [l.reason, l.eventId])).toEqual([
      ['bad-signature', unsigned.id], ['bad-signature', wrongKey.id], ['bad-signature', tampered.id]
    ])
    expect(await metric(s.r, 'regionsync_dead_letters_total', { reason: 'bad-signature' })).toBe(3)
  })

  it('paths that would leave the target are dead-lettered as bad-path and never sent', async () => {
    const s = await setup()
    const resource = 'users/1'
    const paths = ['//evil.example/x', '/a/../../b', '/%2e%2e/x', '/a/%2E%2E/%2e%2e/b', 'http://evil.example/x', '/a\\..\\..\\b']
    const events = paths.map((path) => newEvent({ resource, path }))
    for (const e of events) await s.pub.publish(e)
    await sentinel(s, resource)

    expect(s.target.requests.map((r) => r.path)).toEqual(['/v3/sentinel'])
    const letters = await waitFor('the dead letters', async () => { const l = await deadLetters(s); return l.length === paths.length ? l : undefined })
    expect(letters.map((l) => [l.reason, l.path])).toEqual(paths.map((p) => ['bad-path', p]))
    expect(await metric(s.r, 'regionsync_dead_letters_total', { reason: 'bad-path' })).toBe(paths.length)
  })
})

describe('what is not sent, or sent once', () => {
  it('an event from the replicator\'s own region is acknowledged and never sent', async () => {
    const s = await setup()
    const own = newEvent({ origin: REGION, resource: 'users/1' })
    await s.pub.publish(own)
    await sentinel(s, 'users/1')

    expect(s.target.withKey(own.id)).toHaveLength(0)
    expect(s.target.requests).toHaveLength(1)
    expect(await metric(s.r, 'regionsync_events_skipped_total', { reason: 'own-origin' })).toBe(1)
    expect(await deadLetters(s)).toEqual([])
    await waitFor('pending to reach 0', async () => (await pending(s)) === 0)
  })

  it('the same event stored twice under different message ids reaches the target once', async () => {
    const s = await setup()
    const event = newEvent({ resource: 'users/1' })
    const first = await s.pub.publish(event, { msgID: `${event.id}-a` })
    const second = await s.pub.publish(event, { msgID: `${event.id}-b` })
    expect(first.duplicate).toBe(false)
    expect(second.duplicate).toBe(false)
    await sentinel(s, 'users/1')

    expect(s.target.withKey(event.id)).toHaveLength(1)
    expect(await metric(s.r, 'regionsync_events_skipped_total', { reason: 'already-applied' })).toBe(1)
    expect(await metric(s.r, 'regionsync_events_applied_total')).toBe(2)
    await waitFor('pending to reach 0', async () => (await pending(s)) === 0)
  })

  it('a create stored again reaches a target without the plugin once, also through an instance that did not apply it', async () => {
    const s = await setup()
    const create = newEvent({ resource: 'users/abc', created: { id: 'abc', field: 'user.id', mode: 'inject' } })
    await s.pub.publish(create, { msgID: `${create.id}-a` })
    await waitFor('the create applied', () => s.target.withKey(create.id).length === 1)
    await waitFor('pending to reach 0', async () => (await pending(s)) === 0)
    await s.r.close()
    // This target does not say it recorded the replay: the region's applied log is what knows.
    await s.pub.publish(create, { msgID: `${create.id}-b` })
    const next = await replicator(s.ns, s.target.url)
    await waitFor('the copy to be acknowledged', async () => (await regionLag(s.jsm, names(s.ns), REGION, next.partitions)).pending === 0)
    expect(s.target.withKey(create.id)).toHaveLength(1)
    expect(await registryValue(next.metrics.registry, 'regionsync_events_skipped_total', { region: REGION, reason: 'already-applied' })).toBe(1)
    expect((await (await new Kvm(await connection()).open(names(s.ns).appliedBucket)).status()).values).toBe(1)
  })

  it('events of one resource reach the target in publish order across two replicator instances (I3)', async () => {
    const s = await setup(() => ({ status: 200, delayMs: Math.floor(Math.random() * 6) }))
    const second = await replicator(s.ns, s.target.url)
    const keys = ['a', 'b', 'c', 'd', 'e']
    for (let i = 0; i < 200; i++) {
      const key = keys[i % keys.length] as string
      await s.pub.publish(newEvent({ resource: `items/${key}`, method: 'PATCH', path: `/items/${key}`, body: JSON.stringify({ seq: i }) }))
    }

    await waitFor('all 200 events applied', () => s.target.requests.length >= 200, 40_000)
    await waitFor('pending to reach 0', async () => (await pending(s)) === 0)
    expect(s.target.requests).toHaveLength(200)
    expect(new Set(s.target.requests.map((r) => r.headers['idempotency-key'])).size).toBe(200)
    for (const key of keys) {
      const seqs = s.target.requests.filter((r) => r.path === `/items/${key}`).map((r) => (JSON.parse(r.body.toString('utf8')) as { seq: number }).seq)
      expect(seqs).toHaveLength(40)
      expect(seqs).toEqual([...seqs].sort((a, b) => a - b))
    }
    expect((await s.r.status()).applied + (await second.status()).applied).toBe(200)
  })
})

describe('a delivery lost on the way', () => {
  it('is read from the stream and applied in order, before the later events of its resource, not after its ack wait', async () => {
    // The first replay is held, so the window (2) stays full and the replicator asks for nothing.
    const s = await setup((_req, i) => ({ status: 200, delayMs: i === 0 ? 1500 : 0 }), { window: 2 })
    const resource = 'items/a'
    const event = (i: number): RegionsyncEvent => newEvent({ resource, method: 'PATCH', path: '/items/a', body: JSON.stringify({ seq: i }) })
    await s.pub.publish(event(1))
    await s.pub.publish(event(2))
    await waitFor('the first replay to reach the target', () => s.target.requests.length === 1)
    await new Promise((resolve) => setTimeout(resolve, 300))
    // Event 3 is delivered to a pull nobody on the replicator's side sees: as when the server its
    // connection went through died with the message on the way. The server counts it delivered.
    await s.pub.publish(event(3))
    const nc = await connection()
    const consumer = names(s.ns).consumer(REGION, partitionOf(resource, s.r.partitions))
    const stolen = await nc.request(`$JS.API.CONSUMER.MSG.NEXT.${names(s.ns).eventStream}.${consumer}`, JSON.stringify({ batch: 1, no_wait: true }), { timeout: 2000, noMux: true })
    expect(JSON.parse(stolen.string()).body).toBe(JSON.stringify({ seq: 3 }))
    await s.pub.publish(event(4))

    await waitFor('four replays', () => s.target.requests.length >= 4)
    const order = (): number[] => s.target.requests.map((r) => (JSON.parse(r.body.toString('utf8')) as { seq: number }).seq)
    expect(order()).toEqual([1, 2, 3, 4])
    // Its redelivery after the ack wait is found applied and acknowledged, not sent again.
    await waitFor('pending to reach 0', async () => (await pending(s)) === 0, 20_000)
    expect(order()).toEqual([1, 2, 3, 4])
  })
})

describe('shutdown', () => {
  it('close() lets an in-flight replay finish and acknowledges it; a replicator started afterwards does not replay it', async () => {
    const ns = uniqueNamespace()
    const t = await target(() => ({ status: 200, delayMs: 300 }))
    const r1 = await replicator(ns, t.url)
    const pub = new EventPublisher(await connection(), ns, r1.partitions, SIGNING_KEY)
    const event = newEvent({ resource: 'users/1' })
    await pub.publish(event)
    await waitFor('the replay to be in flight', () => t.requests.length === 1)

    const closing = r1.close()
    expect(r1.close()).toBe(closing)
    await closing
    const [req] = t.withKey(event.id)
    expect(req!.answeredAt).toBeDefined()
    expect((await r1.status()).applied).toBe(1)

    t.script = () => ({ status: 200 })
    await replicator(ns, t.url)
    const next = newEvent({ resource: 'users/1' })
    await pub.publish(next)
    await waitFor('the next event applied by the new replicator', () => t.withKey(next.id).length === 1, 10_000)
    expect(t.withKey(event.id)).toHaveLength(1)
    expect(t.requests).toHaveLength(2)
  })
})

describe('observability', () => {
  it('the metrics server serves /metrics, /status, /healthz and /readyz', async () => {
    const s = await setup()
    const server = await startMetricsServer(s.r, 0, '127.0.0.1', silentLogger)
    h.defer(async () => await server.close())
    const base = `http://127.0.0.1:${server.port}`
    const event = newEvent()
    await s.pub.publish(event)
    await waitFor('the event applied', () => s.target.requests.length === 1)

    const metrics = await waitFor('/metrics to show the event applied', async () => {
      const text = await (await request(`${base}/metrics`)).body.text()
      return metricValue(text, 'regionsync_events_applied_total', { region: REGION }) === 1 ? text : undefined
    })
    for (const [name, type] of [
      ['regionsync_lag_seconds', 'gauge'], ['regionsync_pending_events', 'gauge'], ['regionsync_events_applied_total', 'counter'],
      ['regionsync_apply_retries_total', 'counter'], ['regionsync_dead_letters_total', 'counter'],
      ['regionsync_apply_duration_seconds', 'histogram'], ['regionsync_end_to_end_seconds', 'histogram']
    ]) {
      expect(metrics).toContain(`# TYPE ${name} ${type}`)
    }
    expect(metricValue(metrics, 'regionsync_apply_duration_seconds_count', { region: REGION })).toBe(1)
    expect(metricValue(metrics, 'regionsync_end_to_end_seconds_count', { region: REGION })).toBe(1)

    const statusRes = await request(`${base}/status`)
    expect(statusRes.statusCode).toBe(200)
    const status = await statusRes.body.json() as Record<string, unknown>
    expect(status).toMatchObject({ region: REGION, target: s.target.url, ready: true, connected: true, partitions: s.r.partitions, applied: 1 })
    expect(JSON.stringify(status)).not.toContain(TOKEN)

    const healthz = await request(`${base}/healthz`)
    await healthz.body.dump()
    expect(healthz.statusCode).toBe(200)
    const readyz = await request(`${base}/readyz`)
    await readyz.body.dump()
    expect(readyz.statusCode).toBe(200)

    await s.r.close()
    const notReady = await request(`${base}/readyz`)
    await notReady.body.dump()
    expect(notReady.statusCode).toBe(503)
  })

  it('lag of a region with no replicator running counts its pending events and the age of the oldest (I7)', async () => {
    const ns = uniqueNamespace()
    const r = await replicator(ns, `http://127.0.0.1:${await freePort()}`)
    const partitions = r.partitions
    await r.close()
    const nc = await connection()
    const pub = new EventPublisher(nc, ns, partitions, SIGNING_KEY)
    const now = Date.now()
    for (let i = 0; i < 5; i++) {
      await pub.publish(newEvent({ resource: `users/${i}`, committedAt: new Date(now - (10 - i) * 1000) }))
    }

    const lag = await regionLag(await jetstreamManager(nc), names(ns), REGION, partitions)
    expect(lag.pending).toBe(5)
    expect(lag.consumers).toBe(partitions)
    expect(lag.lagSeconds).toBeGreaterThanOrEqual(10)
    expect(lag.lagSeconds).toBeLessThanOrEqual(12)
    expect(lag.oldestPendingAt?.getTime()).toBe(now - 10_000)
  })
})
