import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { jetstreamManager } from '@nats-io/jetstream'
import { Kvm } from '@nats-io/kv'
import { CONDUIT_ROUTE_SETTINGS, buildConduitApi, type ConduitApiOptions, type ConduitState } from '@regionsync/examples/conduit'
import { listDeadLetters, runCli, type Replicator, type ReplicatorOptions, type StoredDeadLetter } from '@regionsync/replicator'
import { names, regionLag } from '@regionsync/shared'
import { describe, expect, it } from 'vitest'
import { registryValue } from './helpers/events.js'
import { SIGNING_KEY, call, startReplicator, uniqueNamespace, waitFor } from './helpers/fixtures.js'
import { useNats } from './helpers/harness.js'

/**
 * The second example API, three regions of it: writes land in `us`, replicators apply them to `eu`
 * and `ap`, each region running the same app with the plugin. What a user of the app sees must be
 * the same everywhere, with no more route settings than CONDUIT_ROUTE_SETTINGS; and every way the
 * regions can be made to diverge must show as a dead letter with its reason.
 */

const h = useNats()
const JWT_SECRET = randomBytes(32).toString('hex')
const ENCRYPTION_KEY = randomBytes(32).toString('hex')

interface Region { name: string, url: string, replicator: Replicator | null }
interface World { ns: string, us: Region, targets: Region[] }

async function startRegion (name: string, ns: string, app: Partial<ConduitApiOptions> = {}): Promise<Region> {
  const nc = await h.connection()
  const spoolDir = await mkdtemp(join(tmpdir(), 'regionsync-spool-'))
  const api = await buildConduitApi({
    region: name,
    jwtSecret: JWT_SECRET,
    // Conduit's writes are the caller's: the user's token is carried sealed and replayed as sent.
    regionsync: { region: name, connection: nc, signingKey: SIGNING_KEY, namespace: ns, spool: { dir: spoolDir }, forwardHeaders: ['authorization'], encryptionKey: ENCRYPTION_KEY },
    ...app
  })
  h.defer(async () => { await api.close(); await rm(spoolDir, { recursive: true, force: true }) })
  return { name, url: await api.listen({ port: 0, host: '127.0.0.1' }), replicator: null }
}

async function replicate (region: Region, ns: string, options: Partial<ReplicatorOptions> = {}): Promise<Replicator> {
  const r = await startReplicator(await h.connection(), {
    region: region.name, namespace: ns, target: region.url, encryptionKey: ENCRYPTION_KEY, ...options
  })
  h.defer(async () => await r.close())
  region.replicator = r
  return r
}

async function world (targets: Array<{ name: string, app?: Partial<ConduitApiOptions> }>, replicator: Partial<ReplicatorOptions> = {}): Promise<World> {
  const ns = uniqueNamespace()
  const us = await startRegion('us', ns)
  const ts = await Promise.all(targets.map(async (t) => await startRegion(t.name, ns, t.app)))
  for (const t of ts) await replicate(t, ns, replicator)
  return { ns, us, targets: ts }
}

async function stateOf (url: string): Promise<ConduitState> {
  return (await call(url, 'GET', '/_conduit/state')).body as ConduitState
}

const auth = (token: string): Record<string, string> => ({ authorization: `Token ${token}` })

/** Writes the source answered 2xx that change something (all but login): one event each. */
let writes = 0

/** Calls the API and expects the status, so a workload step that fails says which. */
async function ok (url: string, method: string, path: string, status: number, body?: unknown, headers: Record<string, string> = {}): Promise<any> {
  const res = await call(url, method, path, body, headers)
  expect(res.status, `${method} ${path}: ${JSON.stringify(res.body)}`).toBe(status)
  if (method !== 'GET' && status < 300 && path !== '/api/users/login') writes++
  return res.body
}

async function register (url: string, username: string, password = 'pw-' + username): Promise<string> {
  const res = await ok(url, 'POST', '/api/users', 201, { user: { username, email: `${username}@example.org`, password } })
  return res.user.token as string
}

async function metric (r: Replicator, name: string, labels: Record<string, string>): Promise<number> {
  return await registryValue(r.metrics.registry, name, labels)
}

async function deadLetters (w: World, region: Region): Promise<StoredDeadLetter[]> {
  return await listDeadLetters(await jetstreamManager(await h.connection()), names(w.ns), region.name)
}

/** The region's letters once there is one and the region has handled every event, so the list is final. */
async function settledLetters (w: World, region: Region): Promise<StoredDeadLetter[]> {
  await waitFor('a dead letter', async () => (await deadLetters(w, region)).length > 0)
  const jsm = await jetstreamManager(await h.connection())
  const partitions = (region.replicator as Replicator).partitions
  await waitFor(`${region.name} to handle every event`, async () => (await regionLag(jsm, names(w.ns), region.name, partitions)).pending === 0)
  return await deadLetters(w, region)
}

describe('three regions of the Conduit example', () => {
  it('needs at most three route settings', () => {
    expect(Object.keys(CONDUIT_ROUTE_SETTINGS).length).toBeLessThanOrEqual(3)
  })

  it('ends with every region equal as a client sees it, and no dead letter', async () => {
    const w = await world([{ name: 'eu' }, { name: 'ap' }])
    const us = w.us.url
    writes = 0
    const alice = await register(us, 'alice')
    const bob = await register(us, 'bob')
    // Login changes nothing; a wrong password is refused the same everywhere.
    await ok(us, 'POST', '/api/users/login', 200, { user: { email: 'alice@example.org', password: 'pw-alice' } })
    await ok(us, 'POST', '/api/users/login', 422, { user: { email: 'alice@example.org', password: 'nope' } })

    const a1 = (await ok(us, 'POST', '/api/articles', 201, { article: { title: 'How to train your dragon', description: 'Ever wonder how?', body: 'You have to believe', tagList: ['dragons', 'training'] } }, auth(alice))).article
    const b1 = (await ok(us, 'POST', '/api/articles', 201, { article: { title: 'Bob writes', description: 'd', body: 'b' } }, auth(bob))).article
    expect(a1.slug).toMatch(/^how-to-train-your-dragon-[0-9a-f]{6}$/)
    expect(a1.id).toBeUndefined()
    const c1 = (await ok(us, 'POST', `/api/articles/${a1.slug}/comments`, 201, { comment: { body: 'first!' } }, auth(bob))).comment
    const c2 = (await ok(us, 'POST', `/api/articles/${a1.slug}/comments`, 201, { comment: { body: 'second' } }, auth(bob))).comment
    await ok(us, 'POST', `/api/articles/${b1.slug}/comments`, 201, { comment: { body: 'nice, bob' } }, auth(alice))
    await ok(us, 'POST', `/api/articles/${a1.slug}/favorite`, 200, undefined, auth(bob))
    await ok(us, 'POST', '/api/profiles/bob/follow', 200, undefined, auth(alice))
    await ok(us, 'POST', '/api/profiles/alice/follow', 200, undefined, auth(bob))
    await ok(us, 'DELETE', '/api/profiles/bob/follow', 200, undefined, auth(alice))
    await ok(us, 'POST', '/api/profiles/bob/follow', 200, undefined, auth(alice))
    await ok(us, 'PUT', `/api/articles/${a1.slug}`, 200, { article: { body: 'You have to believe, really' } }, auth(alice))
    await ok(us, 'DELETE', `/api/articles/${a1.slug}/comments/${c1.id as number}`, 204, undefined, auth(bob))
    await ok(us, 'PUT', '/api/user', 200, { user: { bio: 'I like dragons', password: 'new-secret' } }, auth(alice))
    const a2 = (await ok(us, 'POST', '/api/articles', 201, { article: { title: 'Draft', description: 'd', body: 'b' } }, auth(alice))).article
    await ok(us, 'POST', `/api/articles/${a2.slug}/favorite`, 200, undefined, auth(alice))
    await ok(us, 'DELETE', `/api/articles/${a2.slug}`, 204, undefined, auth(alice))
    await ok(us, 'DELETE', `/api/articles/${b1.slug}`, 204, undefined, auth(bob))
    // Answers that change nothing are not replicated, and the API lives through them.
    await ok(us, 'DELETE', `/api/articles/${b1.slug}`, 404, undefined, auth(bob))
    await ok(us, 'PUT', `/api/articles/${a1.slug}`, 403, { article: { body: 'not mine' } }, auth(bob))
    await ok(us, 'POST', '/api/articles', 401, { article: { title: 't', description: 'd', body: 'b' } })

    const source = await stateOf(us)
    expect(source.articles.map((a) => a.slug)).toEqual([a1.slug])
    expect(source.comments.map((c) => c.id)).toEqual([c2.id])
    for (const t of w.targets) {
      await waitFor(`${t.name} to equal us`, async () => JSON.stringify(await stateOf(t.url)) === JSON.stringify(source), 30_000)
        .catch(async (err) => { expect(await stateOf(t.url), `${t.name} state`).toEqual(source); throw err })
      // The password the user changed works in every region (the body travelled as sent, I9).
      await ok(t.url, 'POST', '/api/users/login', 200, { user: { email: 'alice@example.org', password: 'new-secret' } })
      expect(await deadLetters(w, t)).toEqual([])
      expect(await metric(t.replicator as Replicator, 'regionsync_ids_remapped_total', { region: t.name })).toBe(0)
    }
    // One event per write the client saw succeed, whatever the handler's style.
    const published = (await (await jetstreamManager(await h.connection())).streams.info(names(w.ns).eventStream)).state.messages
    expect(published).toBe(writes)
  })
})

describe('divergences show as dead letters with their reason', () => {
  // eu assigns its own slugs and comment ids, from another range, as most real APIs would.
  const ownIds = { name: 'eu', app: { acceptClientIds: false, firstId: 1000 } }
  const retry = { retry: { baseDelayMs: 20, maxDelayMs: 100, dependencyAttempts: 3 } }

  async function seed (w: World): Promise<{ alice: string, bob: string, slug: string, comment: number }> {
    const alice = await register(w.us.url, 'alice')
    const bob = await register(w.us.url, 'bob')
    const slug = (await ok(w.us.url, 'POST', '/api/articles', 201, { article: { title: 'Hello', description: 'd', body: 'b' } }, auth(alice))).article.slug as string
    const comment = (await ok(w.us.url, 'POST', `/api/articles/${slug}/comments`, 201, { comment: { body: 'hi' } }, auth(bob))).comment.id as number
    const eu = w.targets[0] as Region
    await waitFor('eu to have the comment', async () => (await stateOf(eu.url)).comments.length === 1)
    return { alice, bob, slug, comment }
  }

  it('a target that assigns its own ids gets every later write on them, on routes with no settings', async () => {
    const w = await world([ownIds], retry)
    const eu = w.targets[0] as Region
    const { alice, bob, slug, comment } = await seed(w)
    const euArticle = (await stateOf(eu.url)).articles[0]
    expect(euArticle?.slug).not.toBe(slug)
    expect((await stateOf(eu.url)).comments[0]?.id).toBe(1000)
    expect(comment).toBe(1)

    await ok(w.us.url, 'PUT', `/api/articles/${slug}`, 200, { article: { body: 'edited' } }, auth(alice))
    await ok(w.us.url, 'POST', `/api/articles/${slug}/favorite`, 200, undefined, auth(bob))
    await ok(w.us.url, 'POST', `/api/articles/${slug}/comments`, 201, { comment: { body: 'again' } }, auth(alice))
    await ok(w.us.url, 'DELETE', `/api/articles/${slug}/comments/${comment}`, 204, undefined, auth(bob))
    await waitFor('eu to apply the edits', async () => {
      const s = await stateOf(eu.url)
      return s.articles[0]?.body === 'edited' && s.articles[0]?.favoritedBy.join() === 'bob' && s.comments.map((c) => c.body).join() === 'again'
    })
    expect(await metric(eu.replicator as Replicator, 'regionsync_ids_remapped_total', { region: 'eu' })).toBe(3)
    expect(await deadLetters(w, eu)).toEqual([])
  })

  it('a write naming an id whose mapping is lost is dead-lettered unmapped-id, never sent', async () => {
    const w = await world([ownIds], retry)
    const eu = w.targets[0] as Region
    const { bob, slug, comment } = await seed(w)
    // The mapping write went missing (here: purged) for every entity the region knew.
    const kv = await new Kvm(await h.connection()).open(names(w.ns).entityBucket)
    for await (const key of await kv.keys('eu.>')) await kv.purge(key)
    await ok(w.us.url, 'DELETE', `/api/articles/${slug}/comments/${comment}`, 204, undefined, auth(bob))
    const letters = await settledLetters(w, eu)
    expect(letters.map((l) => [l.reason, l.method, l.path])).toEqual([['unmapped-id', 'DELETE', `/api/articles/${slug}/comments/${comment}`]])
    expect(letters[0]?.detail).toContain(slug)
    const before = await stateOf(eu.url)
    expect(before.comments).toHaveLength(1)
    expect(await metric(eu.replicator as Replicator, 'regionsync_dead_letters_total', { region: 'eu', reason: 'unmapped-id' })).toBe(1)

    // The operator tells the region what its API calls them, and replays the letter.
    const out: string[] = []
    const io = { out: (l: string) => out.push(l), err: (l: string) => out.push(l), env: {} }
    const cli = async (...args: string[]): Promise<number> => await runCli([...args, '--nats', h.nats.url, '--namespace', w.ns, '--region', 'eu'], io)
    expect(await cli('ids', 'map', '--type', '/api/articles', '--source', slug, '--target', before.articles[0]?.slug as string)).toBe(0)
    expect(await cli('ids', 'map', '--type', `/api/articles/${slug}/comments`, '--source', String(comment), '--target', String(before.comments[0]?.id))).toBe(0)
    expect(await cli('dlq', 'replay')).toBe(0)
    expect((await stateOf(eu.url)).comments).toEqual([])
    expect(await deadLetters(w, eu)).toEqual([])
  })

  it('a DELETE that went out with an untranslated id is dead-lettered delete-not-found, not counted applied', async () => {
    const w = await world([ownIds], retry)
    const eu = w.targets[0] as Region
    const { bob, slug, comment } = await seed(w)
    // The region forgets which types it translates (as an instance that has not heard yet would):
    // the DELETE goes out with the source's slug and id, and the target answers 404.
    await (eu.replicator as Replicator).close()
    const kv = await new Kvm(await h.connection()).open(names(w.ns).idTypesBucket)
    for await (const key of await kv.keys('eu.>')) await kv.purge(key)
    const r = await replicate(eu, w.ns, retry)
    const applied = await metric(r, 'regionsync_events_applied_total', { region: 'eu' })
    await ok(w.us.url, 'DELETE', `/api/articles/${slug}/comments/${comment}`, 204, undefined, auth(bob))
    const letters = await settledLetters(w, eu)
    expect(letters.map((l) => [l.reason, l.method])).toEqual([['delete-not-found', 'DELETE']])
    expect(letters[0]?.detail).toContain('never deleted it')
    expect((await stateOf(eu.url)).comments).toHaveLength(1)
    expect(await metric(r, 'regionsync_events_applied_total', { region: 'eu' })).toBe(applied)
  })
})
