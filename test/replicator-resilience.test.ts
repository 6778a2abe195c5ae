import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import { DEFAULT_PARTITIONS, names, partitionOf, regionLag, type RegionsyncEvent } from '@regionsync/shared'
import { DEFAULT_SHUTDOWN_GRACE_MS, Replicator, listDeadLetters, startMetricsServer, type ReplicatorOptions } from '@regionsync/replicator'
import { request } from 'undici'
import { describe, expect, it } from 'vitest'
import { RegionsyncProcess, runRegionsync } from './helpers/child-process.js'
import { EventPublisher, metricValue, newEvent, registryValue } from './helpers/events.js'
import { SIGNING_KEY, connect, prng, silentLogger, uniqueNamespace, waitFor, startReplicator } from './helpers/fixtures.js'
import { NatsServer } from './helpers/nats-server.js'
import { TestTarget, type ReceivedRequest, type Script } from './helpers/target.js'
import { useNats } from './helpers/harness.js'

/*
 * Issue 4's claims, each checked the way an operator would see it: the target's state and the
 * order it applied writes in, what `/status`, `/metrics` and the `regionsync` command say, and how
 * many requests the target had to take.
 */

/** Every stream here is made with the default partition count. */
const PARTITIONS = DEFAULT_PARTITIONS

const h = useNats()


const sleep = async (ms: number): Promise<void> => await new Promise((resolve) => setTimeout(resolve, ms))

async function connection (url = h.nats.url): Promise<NatsConnection> {
  const nc = await connect(url)
  h.defer(async () => await nc.close())
  return nc
}

async function target (script?: Script): Promise<TestTarget> {
  const t = await TestTarget.start(script !== undefined ? { script } : {})
  h.defer(async () => await t.close())
  return t
}

async function replicator (region: string, namespace: string, targetUrl: string, extra: Partial<ReplicatorOptions> = {}): Promise<Replicator> {
  const r = await startReplicator(await connection(), { region, namespace, target: targetUrl, ...extra })
  h.defer(async () => await r.close())
  return r
}

async function get (url: string): Promise<{ status: number, text: string }> {
  const res = await request(url)
  return { status: res.statusCode, text: await res.body.text() }
}

async function pendingOf (jsm: JetStreamManager, ns: string, region: string): Promise<number> {
  return (await regionLag(jsm, names(ns), region, PARTITIONS)).pending
}

/** A key of the form `${prefix}${n}` on the given partition, and not one of `taken`. */
function keyOnPartition (prefix: string, partition: number, taken: string[] = []): string {
  for (let n = 0; n < 100_000; n++) {
    const key = `${prefix}${n}`
    if (partitionOf(key, PARTITIONS) === partition && !taken.includes(key)) return key
  }
  throw new Error(`no key ${prefix}N on partition ${partition}`)
}

/* ---------------------------------------------------------------- the `regionsync` command */

function startChild (args: string[]): RegionsyncProcess {
  const child = new RegionsyncProcess(args).spawn()
  h.defer(async () => await child.kill())
  return child
}

function replicateArgs (region: string, targetUrl: string, namespace: string, natsUrl = h.nats.url): string[] {
  return ['replicate', '--region', region, '--target', targetUrl, '--nats', natsUrl, '--signing-key', SIGNING_KEY,
    '--namespace', namespace, '--metrics-port', '0', '--metrics-host', '127.0.0.1']
}

/* ---------------------------------------------------------------- a resource store as the target */

interface Planned {
  event: RegionsyncEvent
  key: string
  /** Position of the event among its key's events. */
  seq: number
}

type Item = Record<string, unknown>

/**
 * A region's API over an in-memory store of items: POST /items creates (409 when the id exists),
 * PATCH /items/:id merges and DELETE /items/:id removes (404 when absent). Like the publisher
 * plugin on a target, it answers a replay whose Idempotency-Key it already applied with the first
 * answer, without applying it again, and counts those dropped duplicates. It logs, per key, the
 * order in which it applied events, and every 4xx it had to answer: with writes arriving in order
 * it never needs one.
 */
class StoreTarget {
  readonly items = new Map<string, Item>()
  /** Per key, the `seq` of each event in the order it was applied. */
  readonly appliedOrder = new Map<string, number[]>()
  /** Per event id, how many times it was applied (2xx without being a duplicate). */
  readonly appliedTimes = new Map<string, number>()
  readonly refused: string[] = []
  duplicatesDropped = 0
  received = 0
  inFlight = 0
  maxInFlight = 0
  readonly #answers = new Map<string, { status: number, body: string }>()
  readonly #plan: Map<string, Planned>
  readonly #delayMs: () => number
  readonly #server: Server

  private constructor (plan: Planned[], delayMs: () => number) {
    this.#plan = new Map(plan.map((p) => [p.event.id, p]))
    this.#delayMs = delayMs
    this.#server = createServer((req, res) => {
      this.received++
      this.inFlight++
      this.maxInFlight = Math.max(this.maxInFlight, this.inFlight)
      res.once('close', () => { this.inFlight-- })
      const chunks: Buffer[] = []
      req.on('data', (c: Buffer) => chunks.push(c))
      req.on('end', () => {
        setTimeout(() => {
          const answer = this.#handle(req.method ?? '', req.url ?? '', req.headers['idempotency-key'], Buffer.concat(chunks).toString('utf8'))
          res.writeHead(answer.status, { 'content-type': 'application/json' }).end(answer.body)
        }, this.#delayMs())
      })
    })
  }

  static async start (plan: Planned[], delayMs: () => number = () => 0): Promise<StoreTarget> {
    const t = new StoreTarget(plan, delayMs)
    await new Promise<void>((resolve, reject) => {
      t.#server.once('error', reject)
      t.#server.listen(0, '127.0.0.1', () => resolve())
    })
    h.defer(async () => await t.close())
    return t
  }

  get url (): string {
    return `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}`
  }

  /** Events applied, duplicates not counted. */
  get applied (): number {
    return this.appliedTimes.size
  }

  #handle (method: string, path: string, idempotencyKey: string | string[] | undefined, body: string): { status: number, body: string } {
    const id = typeof idempotencyKey === 'string' ? idempotencyKey : ''
    const earlier = this.#answers.get(id)
    if (earlier !== undefined) {
      this.duplicatesDropped++
      return earlier
    }
    const planned = this.#plan.get(id)
    const refuse = (status: number, why: string): { status: number, body: string } => {
      this.refused.push(`${status} ${method} ${path} (${planned === undefined ? 'unknown event' : `${planned.key} #${planned.seq}`}): ${why}`)
      return { status, body: JSON.stringify({ error: why }) }
    }
    if (planned === undefined) return refuse(400, 'no such event in the plan')
    const m = /^\/items(?:\/([^/?]+))?$/.exec(path)
    const key = m?.[1]
    let answer: { status: number, body: string }
    if (method === 'POST' && m !== null && key === undefined) {
      const item = JSON.parse(body) as Item
      if (this.items.has(String(item.id))) return refuse(409, 'exists')
      this.items.set(String(item.id), item)
      answer = { status: 201, body: JSON.stringify({ item }) }
    } else if (method === 'PATCH' && key !== undefined) {
      const item = this.items.get(key)
      if (item === undefined) return refuse(404, 'no such item')
      this.items.set(key, { ...item, ...(JSON.parse(body) as Item) })
      answer = { status: 200, body: JSON.stringify({ item: this.items.get(key) }) }
    } else if (method === 'DELETE' && key !== undefined) {
      if (!this.items.delete(key)) return refuse(404, 'no such item')
      answer = { status: 200, body: '{}' }
    } else {
      return refuse(405, 'no such route')
    }
    this.#answers.set(id, answer)
    this.appliedTimes.set(id, (this.appliedTimes.get(id) ?? 0) + 1)
    const order = this.appliedOrder.get(planned.key) ?? []
    order.push(planned.seq)
    this.appliedOrder.set(planned.key, order)
    return answer
  }

  async close (): Promise<void> {
    await new Promise<void>((resolve) => {
      this.#server.close(() => resolve())
      this.#server.closeAllConnections()
    })
  }
}

/**
 * `perKey` writes for each of `keys` items, in a random interleaving that keeps each key's own
 * order: a create, then updates, deletes and re-creates. Returns the events in publish order and
 * the state every region must end with.
 */
function writePlan (keys: number, perKey: number, rand: () => number): { events: Planned[], expected: Record<string, Item> } {
  const perKeyEvents: Planned[][] = []
  const expected: Record<string, Item> = {}
  for (let k = 0; k < keys; k++) {
    const key = `k${String(k).padStart(3, '0')}`
    const resource = `items/${key}`
    const events: Planned[] = []
    let exists = false
    for (let seq = 0; seq < perKey; seq++) {
      let event: RegionsyncEvent
      if (!exists) {
        event = newEvent({ resource, method: 'POST', path: '/items', body: JSON.stringify({ id: key, v: seq, created: seq }) })
        expected[key] = { id: key, v: seq, created: seq }
        exists = true
      } else if (rand() < 0.2) {
        event = newEvent({ resource, method: 'DELETE', path: `/items/${key}`, body: null, contentType: null })
        delete expected[key]
        exists = false
      } else {
        event = newEvent({ resource, method: 'PATCH', path: `/items/${key}`, body: JSON.stringify({ v: seq }) })
        expected[key] = { ...expected[key], v: seq }
      }
      events.push({ event, key, seq })
    }
    perKeyEvents.push(events)
  }
  const bag = perKeyEvents.flatMap((_, k) => Array.from({ length: perKey }, () => k))
  for (let i = bag.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1))
    ;[bag[i], bag[j]] = [bag[j] as number, bag[i] as number]
  }
  const taken = new Array<number>(keys).fill(0)
  const events = bag.map((k) => {
    const i = taken[k] as number
    taken[k] = i + 1
    return (perKeyEvents[k] as Planned[])[i] as Planned
  })
  return { events, expected }
}

/* ---------------------------------------------------------------- 1. chaos */

describe('chaos: 4 instances per region, one killed -9 every 1-2 s', () => {
  const KEYS = 200
  const PER_KEY = 15
  const INSTANCES = 4
  /**
   * JetStream hands a killed instance's in-flight events to another only after the consumer's ack
   * wait. The default 30 s would make the test wait that long after the last kill, so the regions'
   * consumers are created with a short one (the consumer is shared: every instance uses it as made).
   */
  const ACK_WAIT_MS = 5000
  const PUBLISH_WINDOW = 32
  const PUBLISH_MS = 10_000
  const CHAOS_MAX_MS = 25_000
  const CONVERGE_MS = 25_000

  it('every region ends with exactly the source\'s state, each key\'s writes applied once and in publish order', { timeout: 120_000 }, async () => {
    const seed = Date.now() & 0xffffffff
    const rand = prng(seed)
    const { events, expected } = writePlan(KEYS, PER_KEY, rand)
    const methods = events.map((p) => p.event.method)
    expect(methods.filter((m) => m === 'DELETE').length).toBeGreaterThan(100)
    expect(methods.filter((m) => m === 'POST').length).toBeGreaterThan(KEYS + 100)

    const ns = uniqueNamespace()
    // A little service time at the target, so the kills land while replays are in flight.
    const targets = {
      eu: await StoreTarget.start(events, () => Math.floor(rand() * 8)),
      ap: await StoreTarget.start(events, () => Math.floor(rand() * 8))
    }
    for (const [region, t] of Object.entries(targets)) {
      await (await replicator(region, ns, t.url, { ackWaitMs: ACK_WAIT_MS })).close()
    }

    const children: Array<{ region: 'eu' | 'ap', child: RegionsyncProcess }> = []
    // An instance that ends by itself, not by the test's SIGKILL, is a failure of its own.
    const crashed: string[] = []
    const spawnFor = (region: 'eu' | 'ap'): RegionsyncProcess => {
      const child = startChild(replicateArgs(region, targets[region].url, ns))
      void child.exited.then(({ code, signal }) => {
        if (signal !== 'SIGKILL') crashed.push(`${region} instance exited with ${code ?? signal}: ${child.stderr.slice(-1000)}`)
      })
      return child
    }
    for (const region of ['eu', 'ap'] as const) {
      for (let i = 0; i < INSTANCES; i++) children.push({ region, child: spawnFor(region) })
    }
    await Promise.all(children.map(async ({ child }) => await child.metricsPort(30_000)))

    const nc = await connection()
    const jsm = await jetstreamManager(nc)
    const pub = new EventPublisher(nc, ns, PARTITIONS, SIGNING_KEY)
    const complete = (): boolean => targets.eu.applied === events.length && targets.ap.applied === events.length

    let kills = 0
    let published = 0
    let publishing = true
    const startedAt = Date.now()
    const chaos = (async () => {
      while ((publishing || !complete()) && Date.now() - startedAt < CHAOS_MAX_MS) {
        await sleep(1000 + Math.floor(rand() * 1000))
        const i = Math.floor(rand() * children.length)
        const victim = children[i]!
        await victim.child.kill('SIGKILL')
        children[i] = { region: victim.region, child: spawnFor(victim.region) }
        kills++
      }
    })()

    // Progress once a second, for the failure message.
    const timeline: string[] = []
    const progress = setInterval(() => {
      timeline.push(`${((Date.now() - startedAt) / 1000).toFixed(0)}s: published ${published}, kills ${kills}, applied eu ${targets.eu.applied} ap ${targets.ap.applied}`)
    }, 1000)
    h.defer(async () => clearInterval(progress))
    try {
      // Windows of publishes in flight at once, never two of one key in a window, so each key's
      // events reach the stream in plan order; paced to last at least PUBLISH_MS, so that the
      // kills land while events arrive, as they would in production.
      let window: Planned[] = []
      const flush = async (): Promise<void> => {
        await Promise.all(window.map(async (p) => await pub.publish(p.event)))
        published += window.length
        window = []
        const due = startedAt + (published * PUBLISH_MS) / events.length
        if (Date.now() < due) await sleep(due - Date.now())
      }
      for (const p of events) {
        if (window.length === PUBLISH_WINDOW || window.some((w) => w.key === p.key)) await flush()
        window.push(p)
      }
      await flush()
    } finally {
      publishing = false
    }
    await chaos
    const chaosMs = Date.now() - startedAt

    const converged = Date.now() + CONVERGE_MS
    let pending = { eu: -1, ap: -1 }
    while (Date.now() < converged) {
      pending = { eu: await pendingOf(jsm, ns, 'eu'), ap: await pendingOf(jsm, ns, 'ap') }
      if (complete() && pending.eu === 0 && pending.ap === 0) break
      await sleep(200)
    }
    const summary = Object.entries(targets).map(([region, t]) =>
      `${region}: applied ${t.applied}/${events.length}, pending ${pending[region as 'eu' | 'ap']}, duplicate deliveries dropped ${t.duplicatesDropped}, ` +
      `requests ${t.received}, refused ${t.refused.length}${t.refused.length === 0 ? '' : ` (first: ${t.refused.slice(0, 3).join('; ')})`}`).join('\n')
    clearInterval(progress)
    // Where anything is left: per partition, what the consumer holds and who owns it.
    for (const region of ['eu', 'ap']) {
      for (let p = 0; p < PARTITIONS; p++) {
        const ci = await jsm.consumers.info(names(ns).eventStream, names(ns).consumer(region, p))
        if (ci.num_pending + ci.num_ack_pending > 0) timeline.push(`${region} p${p}: pending ${ci.num_pending}, ack pending ${ci.num_ack_pending}, redelivered ${ci.num_redelivered}, waiting pulls ${ci.num_waiting}, floor ${ci.ack_floor.stream_seq}, delivered ${ci.delivered.stream_seq}`)
      }
    }
    console.info(`chaos (seed ${seed}): ${kills} kills over ${(chaosMs / 1000).toFixed(1)} s, done after ${((Date.now() - startedAt) / 1000).toFixed(1)} s\n${summary}`)

    expect(kills).toBeGreaterThanOrEqual(5)
    expect(crashed).toEqual([])
    expect(pending, `${summary}\n${timeline.join('\n')}`).toEqual({ eu: 0, ap: 0 })
    for (const t of Object.values(targets)) {
      expect(t.refused, summary).toEqual([])
      expect(Object.fromEntries(t.items)).toEqual(expected)
      expect(t.applied).toBe(events.length)
      expect([...t.appliedTimes.values()].every((n) => n === 1)).toBe(true)
      for (let k = 0; k < KEYS; k++) {
        const key = `k${String(k).padStart(3, '0')}`
        expect(t.appliedOrder.get(key), `order of ${key}`).toEqual(Array.from({ length: PER_KEY }, (_, seq) => seq))
      }
    }
    for (const region of ['eu', 'ap']) expect(await listDeadLetters(jsm, names(ns), region)).toEqual([])

    // What `regionsync status` shows the operator: every live instance, nothing pending, no dead letters.
    await Promise.all(children.map(async ({ child }) => await child.metricsPort(30_000)))
    const status = await runRegionsync(['status', '--json', '--nats', h.nats.url, '--namespace', ns, '--wait-ms', '1500'])
    expect(status.code).toBe(0)
    const rows = JSON.parse(status.stdout) as Array<{ region: string, instances: unknown[], pending: number, deadLetters: number, breaker: string }>
    expect(rows.map((r) => [r.region, r.instances.length, r.pending, r.deadLetters, r.breaker])).toEqual([
      ['ap', INSTANCES, 0, 0, 'closed'],
      ['eu', INSTANCES, 0, 0, 'closed']
    ])
  })
})

/* ---------------------------------------------------------------- 2. circuit breaker */

describe('circuit breaker', () => {
  it('a target down for 5 s (503, no Retry-After) loses nothing, shows the breaker open then closed, and takes few requests', async () => {
    const OUTAGE_MS = 5000
    const ns = uniqueNamespace()
    let outageUntil = Number.POSITIVE_INFINITY
    const answeredOk = new Set<ReceivedRequest>()
    const down: Script = (req) => {
      if (Date.now() < outageUntil) return { status: 503, body: '{"error":"down for maintenance"}' }
      answeredOk.add(req)
      return { status: 200 }
    }
    const t = await target(down)
    // The same outage seen by a region whose breaker never opens: what per-event retrying costs.
    const control = await target(down)
    const r = await replicator('eu', ns, t.url, { breaker: { failureThreshold: 3, openMs: 500, maxOpenMs: 2000 } })
    await replicator('ap', ns, control.url, { breaker: { failureThreshold: 1_000_000 } })
    const server = await startMetricsServer(r, 0, '127.0.0.1', silentLogger)
    h.defer(async () => await server.close())
    const base = `http://127.0.0.1:${server.port}`

    const samples: Array<{ at: number, breaker: string, open: number }> = []
    let sampling = true
    const sampler = (async () => {
      while (sampling && samples.length < 500) {
        const [status, metrics] = await Promise.all([get(`${base}/status`), get(`${base}/metrics`)])
        samples.push({
          at: Date.now(),
          breaker: (JSON.parse(status.text) as { breaker: string }).breaker,
          open: metricValue(metrics.text, 'regionsync_breaker_open', { region: 'eu' })
        })
        await sleep(100)
      }
    })()

    const pub = new EventPublisher(await connection(), ns, PARTITIONS, SIGNING_KEY)
    const events = Array.from({ length: 10 }, (_, p) => newEvent({ resource: keyOnPartition('users/', p), path: '/v3/users' }))
    const outageStart = Date.now()
    outageUntil = outageStart + OUTAGE_MS
    for (const e of events) await pub.publish(e)

    const applied = (tt: TestTarget, id: string): number => tt.withKey(id).filter((req) => answeredOk.has(req)).length
    await waitFor('all 10 events applied in both regions', () => events.every((e) => applied(t, e.id) === 1 && applied(control, e.id) === 1), 20_000)
    await waitFor('/status to show the breaker closed', () => samples.at(-1)?.breaker === 'closed' && samples.at(-1)?.open === 0, 5000)
    sampling = false
    await sampler

    for (const e of events) expect(applied(t, e.id), `${e.resource} applied once`).toBe(1)
    const during = samples.filter((s) => s.at > outageStart + 500 && s.at < outageUntil)
    expect(during.map((s) => s.breaker)).toContain('open')
    const firstOpen = samples.findIndex((s) => s.open === 1)
    expect(firstOpen).toBeGreaterThanOrEqual(0)
    expect(samples.slice(firstOpen).some((s) => s.open === 0)).toBe(true)
    expect(samples.at(-1)).toMatchObject({ breaker: 'closed', open: 0 })

    const spent = t.requests.filter((req) => !answeredOk.has(req)).length
    const spentWithout = control.requests.filter((req) => !answeredOk.has(req)).length
    console.info(`breaker: the target took ${spent} requests during the ${OUTAGE_MS} ms outage; with per-event retrying it took ${spentWithout}`)
    expect(spent).toBeLessThan(30)
    expect(spentWithout).toBeGreaterThan(3 * spent)
    expect(await listDeadLetters(await jetstreamManager(await connection()), names(ns), 'eu')).toEqual([])
  })
})

/* ---------------------------------------------------------------- 3. poison event and dlq replay */

describe('poison event', () => {
  const dlq = async (ns: string, ...more: string[]): Promise<{ code: number | null, stdout: string, stderr: string }> =>
    await runRegionsync(['dlq', ...more, '--region', 'eu', '--nats', h.nats.url, '--namespace', ns])

  it('a 422 is dead-lettered with its reason while later events go on; once fixed, `regionsync dlq replay` applies it and `dlq list` is empty', async () => {
    const ns = uniqueNamespace()
    const poisonKey = '/v3/users/7'
    let fixed = false
    const t = await target((req) => !fixed && req.method === 'PATCH' && req.path === poisonKey
      ? { status: 422, body: '{"error":"user.email is not an email address"}' }
      : { status: 200 })
    const r = await replicator('eu', ns, t.url)
    const pub = new EventPublisher(await connection(), ns, PARTITIONS, SIGNING_KEY)
    const partition = partitionOf(poisonKey, PARTITIONS)
    const neighbourKey = keyOnPartition('/v3/users/', partition, [poisonKey])
    const otherKey = keyOnPartition('/v3/users/', (partition + 1) % PARTITIONS)
    const poison = newEvent({ resource: poisonKey, method: 'PATCH', path: poisonKey, body: '{"user":{"email":"nope"}}' })
    const neighbour = newEvent({ resource: neighbourKey, method: 'PATCH', path: neighbourKey, body: '{"user":{"name":"n"}}' })
    const other = newEvent({ resource: otherKey, method: 'PATCH', path: otherKey, body: '{"user":{"name":"o"}}' })
    await pub.publish(poison)
    await pub.publish(neighbour)
    await pub.publish(other)

    await waitFor('the events after the poison one applied', () => t.withKey(neighbour.id).length === 1 && t.withKey(other.id).length === 1)
    // Same partition: the neighbour waited for the poison event to be handled, and was not held up by it.
    expect(t.withKey(neighbour.id)[0]!.receivedAt).toBeGreaterThanOrEqual(t.withKey(poison.id)[0]!.receivedAt)
    expect(t.withKey(poison.id)).toHaveLength(1)

    const listed = await waitFor('the dead letter listed', async () => {
      const res = await dlq(ns, 'list')
      return res.stdout.includes(poison.id) ? res : undefined
    })
    expect(listed.code).toBe(0)
    const lines = listed.stdout.trim().split('\n')
    expect(lines).toHaveLength(1)
    for (const part of ['rejected 422', poison.id, `PATCH ${poisonKey}`, 'user.email is not an email address']) expect(lines[0]).toContain(part)
    expect((await r.status()).deadLetters).toBe(1)
    expect(await registryValue(r.metrics.registry, 'regionsync_dead_letters_total', { region: 'eu', reason: 'rejected' })).toBe(1)

    fixed = true
    const replay = await dlq(ns, 'replay')
    expect(replay.stderr).toBe('')
    expect(replay.code).toBe(0)
    expect(replay.stdout.trim()).toBe(`${poison.id}  applied`)
    expect(t.withKey(poison.id)).toHaveLength(2)
    expect(t.withKey(poison.id)[1]!.body.toString('utf8')).toBe('{"user":{"email":"nope"}}')

    const after = await dlq(ns, 'list')
    expect(after.stdout.trim()).toBe('no dead letters for region eu')
    expect(t.requests).toHaveLength(4)
  })

  it('`dlq replay --id` replays only that letter; a letter whose resource has had a newer event applied is reported superseded and not sent', async () => {
    const ns = uniqueNamespace()
    let fixed = false
    const t = await target((req) => !fixed && req.method === 'PATCH' ? { status: 422, body: '{"error":"invalid"}' } : { status: 200 })
    await replicator('eu', ns, t.url)
    const nc = await connection()
    const pub = new EventPublisher(nc, ns, PARTITIONS, SIGNING_KEY)
    const jsm = await jetstreamManager(nc)
    const stale = newEvent({ resource: '/v3/users/1', method: 'PATCH', path: '/v3/users/1', body: '{"user":{"name":"old"}}' })
    const chosen = newEvent({ resource: '/v3/users/2', method: 'PATCH', path: '/v3/users/2', body: '{"user":{"name":"two"}}' })
    await pub.publish(stale)
    await pub.publish(chosen)
    await waitFor('two dead letters', async () => (await listDeadLetters(jsm, names(ns), 'eu')).length === 2)

    fixed = true
    const newer = newEvent({ resource: '/v3/users/1', method: 'PATCH', path: '/v3/users/1', body: '{"user":{"name":"new"}}' })
    await pub.publish(newer)
    await waitFor('the newer event applied', async () => t.withKey(newer.id).length === 1 && await pendingOf(jsm, ns, 'eu') === 0)

    const one = await dlq(ns, 'replay', '--id', chosen.id)
    expect(one.code).toBe(0)
    expect(one.stdout.trim()).toBe(`${chosen.id}  applied`)
    expect(t.withKey(chosen.id)).toHaveLength(2)
    expect(t.withKey(stale.id)).toHaveLength(1)
    expect((await listDeadLetters(jsm, names(ns), 'eu')).map((l) => l.eventId)).toEqual([stale.id])

    const rest = await dlq(ns, 'replay')
    expect(rest.code).toBe(0)
    expect(rest.stdout.trim()).toMatch(new RegExp(`^${stale.id}  superseded  .*/v3/users/1`))
    // Sending it would have put "old" over "new".
    expect(t.withKey(stale.id)).toHaveLength(1)
    expect(t.requests.filter((req) => req.path === '/v3/users/1').at(-1)!.headers['idempotency-key']).toBe(newer.id)
  })
})

/* ---------------------------------------------------------------- 4. identifier translation */

describe('a target that assigns its own ids', () => {
  it('later writes are sent to the id the target assigned, also by a replicator started after the create', async () => {
    const ns = uniqueNamespace()
    const users = new Map<string, unknown>()
    let assigned = 0
    const t = await target((req) => {
      if (req.method === 'POST' && req.path === '/v3/users') {
        const id = `tgt-${++assigned}`
        users.set(id, (JSON.parse(req.body.toString('utf8')) as { user: unknown }).user)
        return { status: 201, body: JSON.stringify({ user: { id } }) }
      }
      const id = /^\/v3\/users\/([^/]+)$/.exec(req.path)?.[1]
      if (id === undefined || !users.has(id)) return { status: 404, body: '{"error":"no such user"}' }
      if (req.method === 'DELETE') users.delete(id)
      else users.set(id, (JSON.parse(req.body.toString('utf8')) as { user: unknown }).user)
      return { status: 200 }
    })
    const resource = '/v3/users/src-1'
    const create = newEvent({ resource, method: 'POST', path: '/v3/users', body: '{"user":{"name":"ada"}}', created: { id: 'src-1', field: 'user.id', mode: 'translate' } })
    const update = newEvent({ resource, method: 'PATCH', path: '/v3/users/src-1', body: '{"user":{"name":"ada l."}}', idSegments: [3] })
    const remove = newEvent({ resource, method: 'DELETE', path: '/v3/users/src-1', body: null, contentType: null, idSegments: [3] })

    const first = await replicator('eu', ns, t.url)
    const pub = new EventPublisher(await connection(), ns, PARTITIONS, SIGNING_KEY)
    await pub.publish(create)
    await pub.publish(update)
    await waitFor('the create and the update applied', () => t.requests.length >= 2)
    await waitFor('the update acknowledged', async () => (await first.status()).applied === 2)
    expect(users).toEqual(new Map([['tgt-1', { name: 'ada l.' }]]))
    await first.close()

    await replicator('eu', ns, t.url)
    await pub.publish(remove)
    await waitFor('the delete applied', () => t.withKey(remove.id).length === 1)
    expect(t.requests.map((req) => `${req.method} ${req.path}`)).toEqual(['POST /v3/users', 'PATCH /v3/users/tgt-1', 'DELETE /v3/users/tgt-1'])
    expect(users.size).toBe(0)
  })
})

/* ---------------------------------------------------------------- 5. throughput controls */

describe('throughput controls', () => {
  /** 40 creates, each on its own key, over every partition. */
  function spread (count: number): Planned[] {
    return Array.from({ length: count }, (_, i) => {
      const key = `c${i}`
      return { event: newEvent({ resource: `items/${key}`, method: 'POST', path: '/items', body: JSON.stringify({ id: key }) }), key, seq: 0 }
    })
  }

  it('maxRps: 20 spreads 40 events over at least 1.5 s and never sends more than about 20 in a second', async () => {
    const ns = uniqueNamespace()
    const limited = await target()
    const unlimited = await target()
    await replicator('eu', ns, limited.url, { maxRps: 20 })
    await replicator('ap', ns, unlimited.url)
    const pub = new EventPublisher(await connection(), ns, PARTITIONS, SIGNING_KEY)
    const events = spread(40)
    for (const { event } of events) await pub.publish(event)

    await waitFor('all 40 applied in both regions', () => limited.requests.length === 40 && unlimited.requests.length === 40, 15_000)
    const times = limited.requests.map((req) => req.receivedAt).sort((a, b) => a - b)
    const span = times.at(-1)! - times[0]!
    const busiestSecond = Math.max(...times.map((from) => times.filter((at) => at >= from && at < from + 1000).length))
    const free = unlimited.requests.map((req) => req.receivedAt)
    console.info(`maxRps 20: 40 events over ${span} ms, at most ${busiestSecond} in one second; unlimited: ${Math.max(...free) - Math.min(...free)} ms`)
    expect(span).toBeGreaterThanOrEqual(1500)
    expect(busiestSecond).toBeLessThanOrEqual(24)
    for (const { event } of events) expect(limited.withKey(event.id)).toHaveLength(1)
  })

  it('concurrency: 1 means the target never has two replays at once, with all 16 partitions busy', async () => {
    const ns = uniqueNamespace()
    const events = spread(48)
    expect(new Set(events.map((p) => partitionOf(p.event.resource, PARTITIONS))).size).toBe(PARTITIONS)
    const one = await StoreTarget.start(events, () => 20)
    const many = await StoreTarget.start(events, () => 20)
    await replicator('eu', ns, one.url, { concurrency: 1 })
    await replicator('ap', ns, many.url)
    const pub = new EventPublisher(await connection(), ns, PARTITIONS, SIGNING_KEY)
    for (const { event } of events) await pub.publish(event)

    await waitFor('all 48 applied in both regions', () => one.applied === 48 && many.applied === 48, 20_000)
    expect(one.maxInFlight).toBe(1)
    // Without the limit the same events do overlap, so the 1 above is the limit's doing.
    expect(many.maxInFlight).toBeGreaterThan(1)
    expect(one.refused).toEqual([])
    expect(one.duplicatesDropped).toBe(0)
  })
})

/* ---------------------------------------------------------------- 6. lifecycle */

describe('lifecycle', () => {
  it('SIGTERM with a slow replay in flight exits 0 within the grace period, and the event is applied exactly once', async () => {
    const ns = uniqueNamespace()
    const t = await target(() => ({ status: 200, delayMs: 1000 }))
    const child = startChild(replicateArgs('eu', t.url, ns))
    const port = await child.metricsPort()
    await waitFor('/readyz 200', async () => (await get(`http://127.0.0.1:${port}/readyz`)).status === 200)
    const nc = await connection()
    const pub = new EventPublisher(nc, ns, PARTITIONS, SIGNING_KEY)
    const event = newEvent({ resource: 'users/1' })
    await pub.publish(event)
    await waitFor('the replay in flight', () => t.withKey(event.id).length === 1)

    const signalledAt = Date.now()
    child.signal('SIGTERM')
    const exit = await Promise.race([child.exited, sleep(DEFAULT_SHUTDOWN_GRACE_MS + 5000).then(() => null)])
    const exitedAt = Date.now()
    expect(exit, `exit within the grace period; stderr: ${child.stderr}`).toEqual({ code: 0, signal: null })
    expect(exitedAt - signalledAt).toBeLessThan(DEFAULT_SHUTDOWN_GRACE_MS)
    // It waited for the answer instead of cutting the request off.
    expect(t.withKey(event.id)[0]!.answeredAt).toBeLessThanOrEqual(exitedAt)
    expect(child.stderr).toBe('')

    // Another instance takes over: it must not replay the event the stopped one finished.
    t.script = () => ({ status: 200 })
    await replicator('eu', ns, t.url)
    const next = newEvent({ resource: 'users/1' })
    await pub.publish(next)
    await waitFor('the next event applied', () => t.withKey(next.id).length === 1)
    await waitFor('nothing pending', async () => await pendingOf(await jetstreamManager(nc), ns, 'eu') === 0)
    expect(t.withKey(event.id)).toHaveLength(1)
    expect(t.requests).toHaveLength(2)
  })

  it('/readyz is 503 while NATS is down and 200 once it is back, and events flow again', async () => {
    const own = await NatsServer.start()
    h.defer(async () => await own.stop())
    const ns = uniqueNamespace()
    const t = await target()
    const child = startChild(replicateArgs('eu', t.url, ns, own.url))
    const readyz = `http://127.0.0.1:${await child.metricsPort()}/readyz`
    await waitFor('/readyz 200', async () => (await get(readyz)).status === 200)

    await own.kill()
    const down = await waitFor('/readyz 503 with NATS down', async () => { const r = await get(readyz); return r.status === 503 ? r : undefined }, 10_000)
    expect(JSON.parse(down.text)).toEqual({ ready: false })
    await own.restart()
    await waitFor('/readyz 200 after NATS is back', async () => (await get(readyz)).status === 200, 15_000)

    const event = newEvent({ resource: 'users/1' })
    await new EventPublisher(await connection(own.url), ns, PARTITIONS, SIGNING_KEY).publish(event)
    await waitFor('an event published after the outage applied', () => t.withKey(event.id).length === 1, 15_000)
    expect(child.running).toBe(true)
  })
})
