import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { jetstream, jetstreamManager } from '@nats-io/jetstream'
import { createIdentityStore, identityVerifyConfig } from '@regionsync/examples'
import {
  RegionReader, Semaphore, canonicalJson, createVerifyMetrics, firstDifference, formatStatusTable, gatherStatus, hashOf, mergeSorted, nextLink,
  parseVerifyConfig, publishRepair, runCli, type TypeConfig, type VerifyReport
} from '@regionsync/replicator'
import { createEvent, createSigner, decodeEvent, defaultStreamSettings, encodeEvent, ensureEventStream, eventBody, names, partitionOf } from '@regionsync/shared'
import { describe, expect, it } from 'vitest'
import { SIGNING_KEY, call, startIdentityApi, startReplicator, state, uniqueNamespace, waitFor, type RunningApi } from './helpers/fixtures.js'
import { useNats } from './helpers/harness.js'
import { TestTarget, type ScriptedReply } from './helpers/target.js'

const h = useNats()

async function api (opts: Parameters<typeof startIdentityApi>[0]): Promise<RunningApi> {
  const running = await startIdentityApi(opts)
  h.defer(async () => await running.app.close())
  return running
}

/** Runs `regionsync verify` as an operator would; returns its exit code and output. */
async function verify (args: string[]): Promise<{ code: number, out: string[], err: string[] }> {
  const out: string[] = []
  const err: string[] = []
  const code = await runCli(['verify', ...args], { out: (l) => out.push(l), err: (l) => err.push(l), env: {} })
  return { code, out, err }
}

describe('regionsync verify', () => {
  it('reports exactly what was changed behind regionsync\'s back while the source keeps writing, repairs it through the stream, and then finds every region equal', async () => {
    const ns = uniqueNamespace()
    const nc = await h.connection()
    const source = await api({ region: 'us', namespace: ns, nc })
    const euStore = createIdentityStore()
    const apStore = createIdentityStore()
    const eu = await api({ region: 'eu', namespace: ns, nc, token: 'eu-secret', store: euStore })
    const ap = await api({ region: 'ap', namespace: ns, nc, token: 'ap-secret', store: apStore })
    // A second door to each target's data, without the plugin: writes through it are never replicated.
    const euBehind = await api({ region: 'eu', namespace: ns, plugin: false, store: euStore })
    const apBehind = await api({ region: 'ap', namespace: ns, plugin: false, store: apStore })
    for (const [region, target, token] of [['eu', eu.url, 'eu-secret'], ['ap', ap.url, 'ap-secret']] as const) {
      const r = await startReplicator(await h.connection(), { region, target, targetToken: token, namespace: ns })
      h.defer(async () => await r.close())
    }

    const users: string[] = []
    for (let i = 0; i < 60; i++) {
      users.push((await call(source.url, 'POST', '/v3/users', { user: { name: `user${i}`, email: `user${i}@example.org`, password: `pw${i}` } })).body.user.id)
    }
    const projects: string[] = []
    for (let i = 0; i < 12; i++) projects.push((await call(source.url, 'POST', '/v3/projects', { project: { name: `project${i}` } })).body.project.id)
    const settled = async (): Promise<boolean> => {
      const want = JSON.stringify((await state(source.url)).projects)
      return (await state(eu.url)).users.length === (await state(source.url)).users.length &&
        JSON.stringify((await state(ap.url)).projects) === want && JSON.stringify((await state(eu.url)).projects) === want
    }
    await waitFor('the regions to replicate the seed', settled)

    // Behind regionsync's back: a user only eu has, a user eu lost, a user whose email eu changed,
    // a project whose name ap changed.
    const extra = (await call(euBehind.url, 'POST', '/v3/users', { user: { name: 'stowaway' } })).body.user.id as string
    expect((await call(euBehind.url, 'DELETE', `/v3/users/${users[7] as string}`)).status).toBe(204)
    expect((await call(euBehind.url, 'PATCH', `/v3/users/${users[21] as string}`, { user: { email: 'changed@eu.example.org' } })).status).toBe(200)
    expect((await call(apBehind.url, 'PATCH', `/v3/projects/${projects[3] as string}`, { project: { name: 'renamed in ap' } })).status).toBe(200)

    // The source keeps taking writes throughout: new users, updates to them, and updates to users
    // that existed when verify began (which a region may not have applied yet when it reads them).
    let writing = true
    let written = 0
    const writer = (async () => {
      for (let i = 0; writing; i++) {
        const res = await call(source.url, 'POST', '/v3/users', { user: { name: `live${i}` } })
        await call(source.url, 'PATCH', `/v3/users/${res.body.user.id as string}`, { user: { enabled: false } })
        await call(source.url, 'PATCH', `/v3/users/${users[40 + (i % 10)] as string}`, { user: { name: `renamed ${i}` } })
        written++
      }
    })()
    h.defer(async () => { writing = false; await writer })

    const dir = await mkdtemp(join(tmpdir(), 'regionsync-verify-'))
    h.defer(async () => await rm(dir, { recursive: true, force: true }))
    const configFile = join(dir, 'verify.json')
    const config = identityVerifyConfig('us', { us: { url: source.url }, eu: { url: eu.url }, ap: { url: ap.url } })
    // Small pages, so paging runs many times over while the source writes.
    await writeFile(configFile, JSON.stringify({ ...config, pageSize: 7 }))
    const common = ['--config', configFile, '--nats', h.nats.url, '--namespace', ns]

    await waitFor('the writer to get going', () => written >= 5)
    const first = await verify([...common, '--json'])
    expect(first.err).toEqual([])
    expect(first.code).toBe(1)
    const report = JSON.parse(first.out[0] as string) as VerifyReport
    const found = report.differences.map(({ type, region, id, kind, field, proof }) => ({ type, region, id, kind, field, proof }))
    expect(found).toEqual(expect.arrayContaining([
      { type: 'users', region: 'eu', id: extra, kind: 'extra', field: null, proof: 'confirmed' },
      { type: 'users', region: 'eu', id: users[7], kind: 'missing', field: null, proof: 'confirmed' },
      { type: 'users', region: 'eu', id: users[21], kind: 'different', field: 'email', proof: 'confirmed' },
      { type: 'projects', region: 'ap', id: projects[3], kind: 'different', field: 'name', proof: 'confirmed' }
    ]))
    expect(found).toHaveLength(4)
    const eusers = report.types.find((t) => t.type === 'users')?.regions.find((r) => r.region === 'eu')
    expect(eusers).toMatchObject({ missing: 1, extra: 1, different: 1, beyondLimit: 0 })
    expect(report.positions.map((p) => p.region).sort()).toEqual(['ap', 'eu'])

    // regionsync status shows what the last full check found, per region.
    const status = await gatherStatus(nc, names(ns), 200)
    expect(status.map((r) => [r.region, r.divergent])).toEqual([['ap', 1], ['eu', 3]])
    expect(formatStatusTable(status)[0]).toMatch(/DIVERGENT/)

    // The table a person reads says the same.
    const table = await verify(common)
    expect(table.code).toBe(1)
    expect(table.out.join('\n')).toMatch(/users\s+eu\s+\d+\s+\d+\s+1\s+1\s+1\s+DIFFERS/)
    expect(table.out.join('\n')).toMatch(/projects\s+ap\s+12\s+12\s+0\s+0\s+1\s+DIFFERS/)

    // --dry-run lists the repairs and publishes none.
    const dry = await verify([...common, '--json', '--repair', '--dry-run'])
    const planned = (JSON.parse(dry.out[0] as string) as VerifyReport).repairs
    expect(planned.map((r) => [r.id, r.method, r.outcome]).sort()).toEqual([
      [extra, 'DELETE', 'would-publish'], [users[7], 'PUT', 'would-publish'], [users[21], 'PUT', 'would-publish'], [projects[3], 'PUT', 'would-publish']
    ].sort())
    expect(planned.every((r) => r.eventId === null)).toBe(true)
    const bounded = await verify([...common, '--json', '--repair', '--dry-run', '--max-repairs', '1'])
    expect((JSON.parse(bounded.out[0] as string) as VerifyReport).repairs).toHaveLength(1)

    // A repair without the signing key is refused by name.
    expect((await verify([...common, '--repair'])).err.join('\n')).toMatch(/--signing-key/)
    const repaired = await verify([...common, '--json', '--repair', '--signing-key', SIGNING_KEY])
    expect(repaired.code).toBe(1)
    const repairs = (JSON.parse(repaired.out[0] as string) as VerifyReport).repairs
    expect(repairs.map((r) => [r.id, r.method, r.outcome]).sort()).toEqual([
      [extra, 'DELETE', 'published'], [users[7], 'PUT', 'published'], [users[21], 'PUT', 'published'], [projects[3], 'PUT', 'published']
    ].sort())

    // Each repair is an event in the stream like any other: signed, of the source, marked, keyed on its resource.
    const jsm = await jetstreamManager(nc)
    const n = names(ns)
    for (const r of repairs) {
      const msg = await jsm.streams.getMessage(n.eventStream, { seq: r.seq as number })
      const event = decodeEvent(msg?.data as Uint8Array)
      expect(event).toMatchObject({ id: r.eventId, origin: 'us', repair: true, resource: r.resource, method: r.method })
      expect(msg?.header.get('Nats-Msg-Id')).toBe(r.eventId)
    }

    // The regions apply them; eu's stray user is gone, its lost one back, the changed fields restored.
    await waitFor('the repairs to be applied', async () =>
      (await call(eu.url, 'GET', `/v3/users/${extra}`)).status === 404 &&
      (await call(eu.url, 'GET', `/v3/users/${users[7] as string}`)).body.user?.name === 'user7' &&
      (await call(eu.url, 'GET', `/v3/users/${users[21] as string}`)).body.user.email === 'user21@example.org' &&
      (await call(ap.url, 'GET', `/v3/projects/${projects[3] as string}`)).body.project.name === 'project3')

    const second = await verify([...common, '--json'])
    const clean = JSON.parse(second.out[0] as string) as VerifyReport
    expect(clean.differences).toEqual([])
    expect(clean.clean).toBe(true)
    expect(second.code).toBe(0)
    expect((await gatherStatus(nc, names(ns), 200)).map((r) => [r.region, r.divergent])).toEqual([['ap', 0], ['eu', 0]])

    // What --every exports after each run.
    const metrics = createVerifyMetrics()
    metrics.record(report)
    metrics.record(clean)
    const text = await metrics.registry.metrics()
    expect(text).toMatch(/regionsync_divergent_resources\{region="eu",type="users"\} 0/)
    expect(text).toMatch(new RegExp(`regionsync_verify_last_full_check_timestamp_seconds ${Date.parse(clean.finishedAt) / 1000}`))
    expect(text).toMatch(/regionsync_verify_runs_total\{result="divergent"\} 1/)
    writing = false
    await writer
    expect(written).toBeGreaterThan(5)
  })

  it('never publishes a stale repair: a source write between its read and its publish makes it read the source again', async () => {
    const nc = await h.connection()
    const jsm = await jetstreamManager(nc)
    const n = names(uniqueNamespace())
    const { partitions } = await ensureEventStream(nc, jsm, n, defaultStreamSettings())
    const users = parseVerifyConfig(identityVerifyConfig('us', { us: { url: 'http://127.0.0.1:1' }, eu: { url: 'http://127.0.0.1:2' } })).types[0] as TypeConfig
    const ctx = { js: jetstream(nc), jsm, names: n, partitions, signer: createSigner(SIGNING_KEY), source: 'us' }
    const subject = n.eventSubject(partitionOf('/v3/users/u1', partitions), 'us')
    let reads = 0
    const outcome = await publishRepair(ctx, users, 'u1', async () => {
      reads++
      // The source takes a write of this partition after verify read it, and publishes its event.
      if (reads === 1) await ctx.js.publish(subject, encodeEvent(createEvent({ origin: 'us', method: 'PATCH', path: '/v3/users/u1', resource: '/v3/users/u1' })))
      return { id: 'u1', name: `read ${reads}`, email: null, enabled: true }
    }, false)
    expect(reads).toBe(2)
    expect(outcome).toMatchObject({ outcome: 'published', method: 'PUT', path: '/v3/users/u1', resource: '/v3/users/u1' })
    const stored = await jsm.streams.getMessage(n.eventStream, { seq: outcome.seq as number })
    const event = decodeEvent(stored?.data as Uint8Array)
    expect(JSON.parse((eventBody(event) as Buffer).toString())).toEqual({ user: { name: 'read 2', email: null, enabled: true } })
    expect(() => createSigner(SIGNING_KEY).verifyEvent(stored?.data as Uint8Array, stored?.header.get('Regionsync-Signature'))).not.toThrow()
  })

  it('rejects a config mistake with one line naming the field', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'regionsync-verify-'))
    h.defer(async () => await rm(dir, { recursive: true, force: true }))
    const file = join(dir, 'verify.json')
    const config = identityVerifyConfig('us', { us: { url: 'http://127.0.0.1:1' }, eu: { url: 'http://127.0.0.1:2' } }) as { types: Array<Record<string, unknown>> }
    ;(config.types[1] as Record<string, unknown>).paging = { kind: 'pages' }
    await writeFile(file, JSON.stringify(config))
    const res = await verify(['--config', file, '--nats', h.nats.url])
    expect(res.code).toBe(2)
    expect(res.err).toEqual(['regionsync: types[1].paging.kind: expects "offset", "cursor" or "link"'])
  })
})

describe('verify pieces', () => {
  const listOf = async function * (ids: string[]): AsyncGenerator<{ id: string, value: unknown }> {
    for (const id of ids) yield { id, value: { id } }
  }

  it('merges sorted lists into their union, in order, each id once with what each list holds', async () => {
    const rows: Array<[string, boolean[]]> = []
    for await (const row of mergeSorted([listOf(['a', 'c', 'd']), listOf(['b', 'c']), listOf([])], (a, b) => a < b ? -1 : a > b ? 1 : 0)) {
      rows.push([row.id, row.values.map((v) => v !== undefined)])
    }
    expect(rows).toEqual([['a', [true, false, false]], ['b', [false, true, false]], ['c', [true, true, false]], ['d', [true, false, false]]])
  })

  it('normalises before comparing: key order and ignored fields do not count; the first differing field is named', () => {
    const a = { id: '1', name: 'x', meta: { updated: 'now', tags: ['a'] } }
    const b = { meta: { tags: ['a'], updated: 'later' }, name: 'x', id: '1' }
    expect(canonicalJson(a, ['meta.updated'])).toBe(canonicalJson(b, ['meta.updated']))
    expect(hashOf(canonicalJson(a, []))).not.toBe(hashOf(canonicalJson(b, [])))
    expect(firstDifference(a, b)).toBe('meta.updated')
    expect(firstDifference({ a: [1, 2] }, { a: [1] })).toBe('a.1')
    expect(firstDifference({ a: 1 }, { a: 1, b: 2 })).toBe('b')
  })

  it('reads the next page from a Link header', () => {
    expect(nextLink('<https://api/x?page=1>; rel="prev", <https://api/x?page=3>; rel="next"')).toBe('https://api/x?page=3')
    expect(nextLink('<https://api/x?page=1>; rel="prev"')).toBeNull()
  })

  it('pages by offset and by Link header, stays on the region\'s origin, and refuses a list out of id order', async () => {
    const ids = Array.from({ length: 23 }, (_, i) => `id${String(i).padStart(2, '0')}`)
    const target = await TestTarget.start({
      script: (req): ScriptedReply => {
        const url = new URL(req.path, 'http://x')
        let offset = Number(url.searchParams.get('offset') ?? url.searchParams.get('page') ?? 0)
        // A create before the offset between two pages: the next page starts one item early.
        if (url.pathname === '/shifting' && offset > 0) offset -= 1
        const limit = Number(url.searchParams.get('limit'))
        const page = ids.slice(offset, offset + limit).map((id) => ({ id }))
        if (url.pathname === '/unsorted') return { body: JSON.stringify([{ id: 'b' }, { id: 'a' }]) }
        if (url.pathname === '/away') return { body: JSON.stringify({ data: [{ id: 'a' }] }), headers: { link: '<http://elsewhere.example/x?limit=5>; rel="next"' } }
        const next = offset + limit < ids.length ? `</linked?limit=${limit}&page=${offset + limit}>; rel="next"` : undefined
        return { body: JSON.stringify({ data: page }), headers: next === undefined ? {} as Record<string, string> : { link: next } }
      }
    })
    h.defer(async () => await target.close())
    const reader = new RegionReader({ name: 'eu', url: new URL(target.url), token: 'read-token' }, 1000, { semaphore: new Semaphore(2) })
    h.defer(async () => await reader.close())
    const type = (over: Partial<TypeConfig>): TypeConfig => ({
      name: 't', collection: '/offset', items: 'data', id: 'id', idOrder: 'string', paging: { kind: 'offset', offsetParam: 'offset', limitParam: 'limit' },
      item: { path: '/t/{id}', field: '' }, ignore: [], resourceKey: '/t/{id}', repair: null, ...over
    })
    const all = async (t: TypeConfig): Promise<string[]> => { const out: string[] = []; for await (const r of reader.list(t, 5)) out.push(r.id); return out }
    expect(await all(type({}))).toEqual(ids)
    expect(await all(type({ collection: '/shifting' }))).toEqual(ids)
    expect(await all(type({ collection: '/linked', paging: { kind: 'link', limitParam: 'limit', next: null } }))).toEqual(ids)
    expect(target.requests.every((r) => r.headers.authorization === 'Bearer read-token')).toBe(true)
    await expect(all(type({ collection: '/unsorted', items: '' }))).rejects.toThrow(/ascending string order/)
    await expect(all(type({ collection: '/away', paging: { kind: 'link', limitParam: 'limit', next: null } }))).rejects.toThrow(/must stay on the region's origin/)
  })

  it('marks a repair event, and decodes the mark strictly while events without it read as before', () => {
    const plain = createEvent({ origin: 'us', method: 'PUT', path: '/v3/users/u1', resource: '/v3/users/u1' })
    expect('repair' in plain).toBe(false)
    expect(JSON.parse(Buffer.from(encodeEvent(plain)).toString())).not.toHaveProperty('repair')
    const repair = createEvent({ origin: 'us', method: 'DELETE', path: '/v3/users/u1', resource: '/v3/users/u1', repair: true })
    expect(decodeEvent(encodeEvent(repair)).repair).toBe(true)
    expect(decodeEvent(encodeEvent(plain)).repair).toBeUndefined()
    for (const bad of [false, 'yes', 1, null]) {
      expect(() => decodeEvent(Buffer.from(JSON.stringify({ ...plain, repair: bad })))).toThrow('repair must be true when present')
    }
  })

  it('names the field of every config mistake', () => {
    const base = (): Record<string, any> => identityVerifyConfig('us', { us: { url: 'http://127.0.0.1:1' }, eu: { url: 'http://127.0.0.1:2', tokenEnv: 'EU_READ_TOKEN' } })
    const fails = (mutate: (c: Record<string, any>) => void, env: Record<string, string> = { EU_READ_TOKEN: 't' }): string => {
      const c = base()
      mutate(c)
      try {
        parseVerifyConfig(c, env)
      } catch (err) {
        return (err as Error).message
      }
      return 'accepted'
    }
    expect(fails(() => {})).toBe('accepted')
    expect(fails(() => {}, {})).toBe('regions.eu.tokenEnv: names EU_READ_TOKEN, which is not set')
    expect(fails((c) => { c.source = 'ap' })).toMatch(/^source: names region ap/)
    expect(fails((c) => { c.types[0].colour = 'red' })).toMatch(/^types\[0\]\.colour: is not a known field/)
    expect(fails((c) => { c.types[0].item.path = '/v3/users' })).toMatch(/^types\[0\]\.item\.path: expects a path with \{id\}/)
    expect(fails((c) => { c.regions.eu.url = 'ftp://x' })).toMatch(/^regions\.eu\.url: expects an http\(s\) URL/)
    expect(fails((c) => { c.maxRps = 0 })).toMatch(/^maxRps: expects a whole number/)
    expect(fails((c) => { c.types[1].name = 'users' })).toBe('types: lists users twice')
    const parsed = parseVerifyConfig({ ...base(), regions: { ...base().regions, us: { url: 'http://127.0.0.1:1', urlEnv: 'US_URL' } } }, { EU_READ_TOKEN: 't', US_URL: 'http://10.0.0.1:3000' })
    expect(parsed.regions.map((r) => [r.name, r.url.origin])).toEqual([['us', 'http://10.0.0.1:3000'], ['eu', 'http://127.0.0.1:2']])
  })
})
