import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream'
import { Kvm } from '@nats-io/kv'
import type { NatsConnection } from '@nats-io/transport-node'
import { buildConduitApi, type ConduitState } from '@regionsync/examples/conduit'
import { DEFAULT_RETRY, IdentityResolver, buildReplay, classify } from '@regionsync/replicator'
import { TargetClient } from '../services/replicator/src/applier.js'
import { EVENT_SIGNATURE_HEADER, createSigner, decodeEvent, names, parseEncryptionKey, type Names } from '@regionsync/shared'
import { describe, expect, it } from 'vitest'
import { SIGNING_KEY, call, silentLogger, uniqueNamespace } from './helpers/fixtures.js'
import { useNats } from './helpers/harness.js'
import { streamMessages } from './helpers/stream.js'

/**
 * The identity modules in the order the replicator's per-event path calls them, against real
 * Conduit APIs: a reference for that path, and proof of the modules before it exists. One region
 * (eu) whose API assigns its own slugs and comment ids; events are applied one at a time, in
 * stream order, as one partition would be.
 */

const h = useNats()
const JWT_SECRET = randomBytes(32).toString('hex')
const ENCRYPTION_KEY = randomBytes(32).toString('hex')
const SCHEDULE = { ...DEFAULT_RETRY, baseDelayMs: 10, maxDelayMs: 50, dependencyAttempts: 3 }

interface Letter { reason: string, path: string, detail: string }

class ReferenceRegion {
  readonly letters: Letter[] = []
  remapped = 0
  applied = 0
  #next = 1

  constructor (
    /** Replaceable, to play another instance of the region. */
    public identity: IdentityResolver,
    private readonly jsm: JetStreamManager,
    private readonly n: Names,
    private readonly client: TargetClient,
    private readonly target: ConstructorParameters<typeof TargetClient>[0]
  ) {}

  /** Applies every event on the stream not yet handled. */
  async catchUp (): Promise<void> {
    for (const m of await streamMessages(this.jsm, this.n.eventStream, this.#next)) {
      createSigner(SIGNING_KEY).verifyEvent(m.data, m.header?.get(EVENT_SIGNATURE_HEADER))
      await this.#apply(decodeEvent(m.data), m.seq)
      this.#next = m.seq + 1
    }
  }

  async #apply (event: ReturnType<typeof decodeEvent>, seq: number): Promise<void> {
    if (event.origin === 'eu') return await this.identity.recordOwn(event, seq)
    for (let attempt = 1; ; attempt++) {
      // 1. Before building the replay, on every attempt.
      const t = await this.identity.translate(event)
      if (t.kind === 'unmapped') return void this.letters.push({ reason: 'unmapped-id', path: event.path, detail: t.detail })
      const replay = buildReplay({ ...event, path: t.path }, this.target, createSigner(SIGNING_KEY), seq)
      // 2. A create's answer is read: its id may differ from the one injected.
      const res = await this.client.send(replay, undefined, event.created !== null)
      // 3. Identity's verdict first, the retry policy's when identity has none.
      const v = await this.identity.onAnswer(event, seq, replay.path, res.status, res.json, attempt, SCHEDULE)
      const outcome = v.kind === 'classify' ? classify(replay.method, res.status, res.headers, attempt, SCHEDULE, { POST: [409] }) : v
      switch (outcome.kind) {
        case 'applied':
          if ('learnt' in outcome && outcome.learnt?.remapped === true) this.remapped++
          this.applied++
          return
        case 'already-applied':
          this.applied++
          return
        case 'retry':
          if (attempt >= SCHEDULE.dependencyAttempts) return void this.letters.push({ reason: 'too-many-attempts', path: replay.path, detail: outcome.reason })
          await new Promise((resolve) => setTimeout(resolve, outcome.delayMs))
          continue
        case 'dead':
          return void this.letters.push({ reason: outcome.reason, path: replay.path, detail: outcome.detail })
        case 'reject':
          return void this.letters.push({ reason: 'rejected', path: replay.path, detail: outcome.reason })
      }
    }
  }
}

async function api (region: string, nc: NatsConnection, ns: string, ownIds: boolean): Promise<string> {
  const spoolDir = await mkdtemp(join(tmpdir(), 'regionsync-spool-'))
  const app = await buildConduitApi({
    region,
    jwtSecret: JWT_SECRET,
    acceptClientIds: !ownIds,
    firstId: ownIds ? 1000 : 1,
    regionsync: { region, connection: nc, signingKey: SIGNING_KEY, namespace: ns, spool: { dir: spoolDir }, forwardHeaders: ['authorization'], encryptionKey: ENCRYPTION_KEY }
  })
  h.defer(async () => { await app.close(); await rm(spoolDir, { recursive: true, force: true }) })
  return await app.listen({ port: 0, host: '127.0.0.1' })
}

async function setup (): Promise<{ us: string, eu: string, region: ReferenceRegion, ns: string, nc: NatsConnection }> {
  const nc = await h.connection()
  const ns = uniqueNamespace()
  const us = await api('us', nc, ns, false)
  const eu = await api('eu', nc, ns, true)
  const identity = await IdentityResolver.open(nc, names(ns), 'eu', { replicas: 1, logger: silentLogger })
  h.defer(async () => identity.close())
  const target = { url: new URL(eu), token: undefined, timeoutMs: 5000, connections: 2, encryptionKey: parseEncryptionKey(ENCRYPTION_KEY) }
  const client = new TargetClient(target)
  h.defer(async () => await client.close())
  return { us, eu, ns, nc, region: new ReferenceRegion(identity, await jetstreamManager(nc), names(ns), client, target) }
}

/** Purges every record of region eu in a KV bucket: its id mappings, or the types it knows translate. */
async function forgetEuRecords (s: { nc: NatsConnection }, bucket: string): Promise<void> {
  const kv = await new Kvm(s.nc).open(bucket)
  for await (const key of await kv.keys('eu.>')) await kv.purge(key)
}

const auth = (token: string): Record<string, string> => ({ authorization: `Token ${token}` })
async function ok (url: string, method: string, path: string, status: number, body?: unknown, headers: Record<string, string> = {}): Promise<any> {
  const res = await call(url, method, path, body, headers)
  expect(res.status, `${method} ${path}: ${JSON.stringify(res.body)}`).toBe(status)
  return res.body
}
/**
 * Letters by reason and path. Today's plugin publishes a DELETE whose async handler calls
 * `reply.send()` without returning it twice (two events, two ids: issue 12, plugin side), so one
 * client write can give two letters; each is right, and this test is about the replicator side.
 */
const distinct = (letters: Letter[]): string[][] => [...new Set(letters.map((l) => `${l.reason} ${l.path}`))].map((k) => k.split(' '))
const stateOf = async (url: string): Promise<ConduitState> => (await call(url, 'GET', '/_conduit/state')).body as ConduitState

async function seed (us: string): Promise<{ alice: string, bob: string, slug: string, comment: number }> {
  const alice = (await ok(us, 'POST', '/api/users', 201, { user: { username: 'alice', email: 'a@x.org', password: 'pw' } })).user.token as string
  const bob = (await ok(us, 'POST', '/api/users', 201, { user: { username: 'bob', email: 'b@x.org', password: 'pw' } })).user.token as string
  const slug = (await ok(us, 'POST', '/api/articles', 201, { article: { title: 'Hello', description: 'd', body: 'b' } }, auth(alice))).article.slug as string
  const comment = (await ok(us, 'POST', `/api/articles/${slug}/comments`, 201, { comment: { body: 'hi' } }, auth(bob))).comment.id as number
  return { alice, bob, slug, comment }
}

describe('the identity modules on the per-event path, against Conduit APIs', () => {
  it('learn the ids a target assigns and translate every later write, on routes with no settings', async () => {
    const s = await setup()
    const { alice, bob, slug, comment } = await seed(s.us)
    await s.region.catchUp()
    const eu = await stateOf(s.eu)
    expect(eu.articles[0]?.slug).not.toBe(slug)
    expect(eu.comments.map((c) => c.id)).toEqual([1000])

    await ok(s.us, 'PUT', `/api/articles/${slug}`, 200, { article: { body: 'edited' } }, auth(alice))
    await ok(s.us, 'POST', `/api/articles/${slug}/favorite`, 200, undefined, auth(bob))
    await ok(s.us, 'POST', `/api/articles/${slug}/comments`, 201, { comment: { body: 'again' } }, auth(alice))
    await ok(s.us, 'DELETE', `/api/articles/${slug}/comments/${comment}`, 204, undefined, auth(bob))
    await s.region.catchUp()
    const after = await stateOf(s.eu)
    expect(after.articles.map((a) => [a.body, a.favoritedBy])).toEqual([['edited', ['bob']]])
    expect(after.comments.map((c) => [c.id, c.body])).toEqual([[1001, 'again']])
    expect(s.region.letters).toEqual([])
    expect(s.region.remapped).toBe(3)

    await ok(s.us, 'DELETE', `/api/articles/${slug}`, 204, undefined, auth(alice))
    await s.region.catchUp()
    expect((await stateOf(s.eu)).articles).toEqual([])
    expect(s.region.letters).toEqual([])
  })

  it('dead-letter unmapped-id a write whose mapping is lost, and send nothing', async () => {
    const s = await setup()
    const { bob, slug, comment } = await seed(s.us)
    await s.region.catchUp()
    await forgetEuRecords(s, names(s.ns).entityBucket)
    await ok(s.us, 'DELETE', `/api/articles/${slug}/comments/${comment}`, 204, undefined, auth(bob))
    await s.region.catchUp()
    expect(distinct(s.region.letters)).toEqual([['unmapped-id', `/api/articles/${slug}/comments/${comment}`]])
    expect((await stateOf(s.eu)).comments).toHaveLength(1)
  })

  it('dead-letter delete-not-found a DELETE that went out untranslated, after retries', async () => {
    const s = await setup()
    const { bob, slug, comment } = await seed(s.us)
    await s.region.catchUp()
    // A second instance that has not heard which types translate: it sends the source's ids.
    await forgetEuRecords(s, names(s.ns).idTypesBucket)
    const unaware = await IdentityResolver.open(s.nc, names(s.ns), 'eu', { replicas: 1, logger: silentLogger })
    h.defer(async () => unaware.close())
    expect(unaware.translatingTypes.size).toBe(0)
    const path = `/api/articles/${slug}/comments/${comment}`
    await ok(s.us, 'DELETE', path, 204, undefined, auth(bob))
    s.region.identity = unaware
    const applied = s.region.applied
    await s.region.catchUp()
    expect(distinct(s.region.letters)).toEqual([['delete-not-found', path]])
    expect(s.region.letters[0]?.detail).toContain('never deleted it')
    expect(s.region.applied).toBe(applied)
    expect((await stateOf(s.eu)).comments).toHaveLength(1)
  })
})
