import { Kvm } from '@nats-io/kv'
import { DEFAULT_RETRY, IdentityResolver, canonicalPath, deleteNotFound, entityPath, runCli, translatePath, type EntityRecord } from '@regionsync/replicator'
import { createEvent, names, type RegionsyncEvent } from '@regionsync/shared'
import { describe, expect, it } from 'vitest'
import { silentLogger, uniqueNamespace, waitFor } from './helpers/fixtures.js'
import { useNats } from './helpers/harness.js'

const created = (entity: string, targetId: string | null, createdSeq: number | null = 1, deletedSeq: number | null = null): EntityRecord =>
  ({ v: 1, entity, targetId, createdSeq, deletedSeq })

function lookupOf (...records: EntityRecord[]): (entity: string) => Promise<EntityRecord | null> {
  const byEntity = new Map(records.map((r) => [r.entity, r]))
  return async (entity) => byEntity.get(entity) ?? null
}

function ev (method: 'POST' | 'PUT' | 'PATCH' | 'DELETE', path: string, createdId?: string, field = 'id'): RegionsyncEvent {
  return createEvent({
    origin: 'us',
    method,
    path,
    resource: path,
    contentType: 'application/json',
    body: Buffer.from('{}'),
    created: createdId === undefined ? null : { id: createdId, field, mode: 'inject' }
  })
}

describe('translatePath', () => {
  it('leaves every path alone, and reads nothing, while no type translates', async () => {
    const lookup = async (): Promise<never> => { throw new Error('no look-up expected') }
    expect(await translatePath('/api/articles/a/comments/7', [], new Set(), lookup)).toEqual({ kind: 'ok', path: '/api/articles/a/comments/7' })
  })

  it('rewrites an id under its own type only: an integer learnt for comments never rewrites an article', async () => {
    const types = new Set(['/api/articles/a/comments'])
    const lookup = lookupOf(created('/api/articles/a/comments/7', '12'))
    expect(await translatePath('/api/articles/a/comments/7', [], types, lookup)).toEqual({ kind: 'ok', path: '/api/articles/a/comments/12' })
    // Paths of other types are not even looked up.
    const none = async (): Promise<never> => { throw new Error('no look-up expected') }
    expect(await translatePath('/api/articles/7', [], types, none)).toEqual({ kind: 'ok', path: '/api/articles/7' })
    expect(await translatePath('/api/tags/7', [], types, none)).toEqual({ kind: 'ok', path: '/api/tags/7' })
    expect(await translatePath('/api/articles/b/comments/7', [], types, none)).toEqual({ kind: 'ok', path: '/api/articles/b/comments/7' })
  })

  it('rewrites a parent and a child, matching the child by the source-form parent path', async () => {
    const types = new Set(['/api/articles', '/api/articles/how-to/comments'])
    const lookup = lookupOf(created('/api/articles/how-to', 'how-to-x1'), created('/api/articles/how-to/comments/3', '9'))
    expect(await translatePath('/api/articles/how-to/comments/3', [], types, lookup))
      .toEqual({ kind: 'ok', path: '/api/articles/how-to-x1/comments/9' })
    expect(await translatePath('/api/articles/how-to/favorite', [2, 3], types, lookup))
      .toEqual({ kind: 'ok', path: '/api/articles/how-to-x1/favorite' })
  })

  it('keeps an id the target honoured, and percent-encodes a target id', async () => {
    const types = new Set(['/things'])
    const lookup = lookupOf(created('/things/a%20b', 'a b'), created('/things/c', 'c/d'))
    expect(await translatePath('/things/a%20b', [], types, lookup)).toEqual({ kind: 'ok', path: '/things/a%20b' })
    expect(await translatePath('/things/c/', [], types, lookup)).toEqual({ kind: 'ok', path: '/things/c%2Fd/' })
  })

  it('is unmapped when a translating type names an id with no record, or a create whose answer named none', async () => {
    const types = new Set(['/api/articles'])
    const lookup = lookupOf(created('/api/articles/noid', null), created('/api/articles/gone', null, null, 5))
    for (const path of ['/api/articles/unknown', '/api/articles/noid/comments', '/api/articles/gone']) {
      const t = await translatePath(path, [], types, lookup)
      expect(t).toMatchObject({ kind: 'unmapped', type: '/api/articles' })
    }
  })

  it('takes a segment that is not valid percent-encoding as its own id, without throwing', async () => {
    expect(await translatePath('/things/%E0%A4%A', [], new Set(['/things']), lookupOf())).toMatchObject({ kind: 'unmapped', id: '%E0%A4%A' })
  })

  it('takes only the route parameter positions as ids when the event lists them', async () => {
    const types = new Set(['/api/articles'])
    expect(await translatePath('/api/articles/feed', [], types, lookupOf())).toMatchObject({ kind: 'unmapped' })
    expect(await translatePath('/api/articles/feed', [9], types, lookupOf())).toEqual({ kind: 'ok', path: '/api/articles/feed' })
  })
})

describe('canonicalPath', () => {
  it('drops a trailing slash and spells every segment one way', () => {
    expect(canonicalPath('/api/articles/')).toBe('/api/articles')
    expect(canonicalPath('/a/%7Eb')).toBe(canonicalPath('/a/~b'))
    expect(entityPath('/api/articles', 'a b')).toBe('/api/articles/a%20b')
  })
})

describe('deleteNotFound', () => {
  const schedule = { ...DEFAULT_RETRY, dependencyAttempts: 3 }
  it('is already applied when the region never saw the entity, or applied its delete', () => {
    expect(deleteNotFound(null, '/x/1', 1, schedule)).toEqual({ kind: 'already-applied', why: 'never-seen' })
    expect(deleteNotFound(created('/x/1', '1', 3, 9), '/x/1', 1, schedule)).toEqual({ kind: 'already-applied', why: 'deleted-here' })
    expect(deleteNotFound(created('/x/1', null, null, 9), '/x/1', 1, schedule)).toEqual({ kind: 'already-applied', why: 'deleted-here' })
  })

  it('retries, then dead-letters with the reason, a 404 for an entity the region created and never deleted', () => {
    const record = created('/api/articles/a/comments/7', '12', 40)
    const first = deleteNotFound(record, '/api/articles/a/comments/7', 1, schedule)
    expect(first.kind).toBe('retry')
    const last = deleteNotFound(record, '/api/articles/a/comments/7', 3, schedule)
    expect(last).toMatchObject({ kind: 'dead', reason: 'delete-not-found' })
    expect((last as { detail: string }).detail).toContain('created /api/articles/a/comments/7 at seq 40 (as "12")')
  })
})

describe('IdentityResolver on a real nats-server', () => {
  const h = useNats()

  async function open (region = 'eu', ns = uniqueNamespace()): Promise<{ r: IdentityResolver, ns: string }> {
    const nc = await h.connection()
    const r = await IdentityResolver.open(nc, names(ns), region, { replicas: 1, logger: silentLogger })
    h.defer(async () => r.close())
    return { r, ns }
  }

  it('learns a remapped id and translates the next event, on another instance too', async () => {
    const { r: a, ns } = await open()
    const create = ev('POST', '/api/articles/a/comments', '7', 'comment.id')
    const learnt = await a.learn(create, 10, { comment: { id: 12, body: 'hi' } }, 'names')
    expect(learnt).toEqual({ type: '/api/articles/a/comments', sourceId: '7', targetId: '12', remapped: true })
    expect(await a.translate(ev('DELETE', '/api/articles/a/comments/7'))).toEqual({ kind: 'ok', path: '/api/articles/a/comments/12' })

    // A second instance of the region loads what the first learnt; a third, started before, hears it.
    const { r: b } = await open('eu', ns)
    expect(await b.translate(ev('DELETE', '/api/articles/a/comments/7'))).toEqual({ kind: 'ok', path: '/api/articles/a/comments/12' })
    await a.learn(ev('POST', '/api/things', 'x'), 11, { id: 'y' }, 'names')
    await waitFor('the watch to deliver /api/things', () => b.translatingTypes.has('/api/things'))
    expect(await b.translate(ev('PATCH', '/api/things/x'))).toEqual({ kind: 'ok', path: '/api/things/y' })

    // Another region's records are its own.
    const { r: other } = await open('ap', ns)
    expect(await other.translate(ev('DELETE', '/api/articles/a/comments/7'))).toEqual({ kind: 'ok', path: '/api/articles/a/comments/7' })
  })

  it('learns nothing to translate when the target honours the injected id, and records the create', async () => {
    const { r } = await open()
    const learnt = await r.learn(ev('POST', '/api/articles', 'how-to', 'article.slug'), 3, { article: { slug: 'how-to' } }, 'names')
    expect(learnt?.remapped).toBe(false)
    expect(r.translatingTypes.size).toBe(0)
    const del = ev('DELETE', '/api/articles/how-to')
    expect(await r.recordOf(del)).toMatchObject({ entity: '/api/articles/how-to', targetId: 'how-to', createdSeq: 3, deletedSeq: null })
    expect(deleteNotFound(await r.recordOf(del), del.path, 99, DEFAULT_RETRY).kind).toBe('dead')
    await r.recordDeleted(del, 4, 'names')
    expect(deleteNotFound(await r.recordOf(del), del.path, 1, DEFAULT_RETRY)).toEqual({ kind: 'already-applied', why: 'deleted-here' })
  })

  it('knows a create or DELETE applied when its own 2xx, recorded by the target\'s guard, wrote the entity\'s record', async () => {
    const { r } = await open()
    const create = ev('POST', '/api/articles', 'a', 'article.slug')
    const del = ev('DELETE', '/api/articles/a')
    const recreate = ev('POST', '/api/articles', 'a', 'article.slug')
    expect(await r.knowsApplied(create)).toBe(false)
    await r.learn(create, 1, { article: { slug: 'a' } }, 'names')
    expect(await r.knowsApplied(create)).toBe(true)
    expect(await r.knowsApplied(del)).toBe(false)
    await r.recordDeleted(del, 2, 'names')
    expect([await r.knowsApplied(create), await r.knowsApplied(del)]).toEqual([true, true])
    // A create answered 409 (or to a target that did not record it) names no event.
    await r.learn(recreate, 3, undefined, 'plain')
    expect([await r.knowsApplied(create), await r.knowsApplied(del), await r.knowsApplied(recreate)]).toEqual([false, false, false])
    // Nor does an update, whatever its entity's record says.
    expect(await r.knowsApplied(ev('PATCH', '/api/articles/a'))).toBe(false)
  })

  it('never moves an entity\'s record back for an answer the target\'s plugin repeated from its record', async () => {
    const { r } = await open()
    const slug = (s: string): unknown => ({ article: { slug: s } })
    const recordOf = async (id: string): Promise<EntityRecord | null> => await r.recordOf(ev('DELETE', `/api/articles/${id}`))
    const create1 = ev('POST', '/api/articles', 'a', 'article.slug')
    const del2 = ev('DELETE', '/api/articles/a')
    const create3 = ev('POST', '/api/articles', 'a', 'article.slug')
    await r.learn(create1, 1, slug('a-1'), 'names')
    await r.recordDeleted(del2, 2, 'names')
    await r.learn(create3, 3, slug('a-3'), 'names')
    // Redeliveries of the first life's create and DELETE, and a copy of the create stored later.
    expect(await r.onAnswer(create1, 1, create1.path, 201, slug('a-1'), 2, DEFAULT_RETRY, 'repeat')).toMatchObject({ kind: 'applied', recorded: false })
    expect(await r.onAnswer(del2, 2, del2.path, 204, undefined, 2, DEFAULT_RETRY, 'repeat')).toMatchObject({ kind: 'applied', recorded: false })
    await r.onAnswer(create1, 9, create1.path, 201, slug('a-1'), 1, DEFAULT_RETRY, 'repeat')
    expect(await recordOf('a')).toMatchObject({ targetId: 'a-3', createdSeq: 3, deletedSeq: null, createdEvent: create3.id })
    // What a crash before the region's record lost is learnt from the repeat: a first create, and
    // a create again after a recorded DELETE.
    await r.onAnswer(ev('POST', '/api/articles', 'b', 'article.slug'), 5, '/api/articles', 201, slug('b-5'), 2, DEFAULT_RETRY, 'repeat')
    expect(await recordOf('b')).toMatchObject({ targetId: 'b-5', createdSeq: 5, deletedSeq: null })
    await r.learn(ev('POST', '/api/articles', 'c', 'article.slug'), 6, slug('c-6'), 'names')
    await r.recordDeleted(ev('DELETE', '/api/articles/c'), 7, 'names')
    await r.onAnswer(ev('POST', '/api/articles', 'c', 'article.slug'), 8, '/api/articles', 201, slug('c-8'), 2, DEFAULT_RETRY, 'repeat')
    expect(await recordOf('c')).toMatchObject({ targetId: 'c-8', createdSeq: 8, deletedSeq: null })
    // ... and a DELETE the region had not recorded.
    await r.onAnswer(ev('DELETE', '/api/articles/c'), 10, '/api/articles/c-8', 204, undefined, 2, DEFAULT_RETRY, 'repeat')
    expect(await recordOf('c')).toMatchObject({ targetId: 'c-8', deletedSeq: 10 })
  })

  it('records the region\'s own creates, so a DELETE from elsewhere of what it deleted itself is already applied', async () => {
    const { r } = await open()
    const own = { ...ev('POST', '/api/articles', 's1', 'article.slug'), origin: 'eu' }
    await r.recordOwn(own, 1)
    const del = ev('DELETE', '/api/articles/s1')
    expect(deleteNotFound(await r.recordOf(del), del.path, 99, DEFAULT_RETRY).kind).toBe('dead')
    await r.recordOwn({ ...del, origin: 'eu' }, 2)
    expect(deleteNotFound(await r.recordOf(del), del.path, 1, DEFAULT_RETRY).kind).toBe('already-applied')
  })

  it('is unmapped when a mapping the region learnt is lost, and for an id of a translating type it never saw created', async () => {
    const nc = await h.connection()
    const { r, ns } = await open()
    await r.learn(ev('POST', '/api/articles/a/comments', '7', 'comment.id'), 10, { comment: { id: 12 } }, 'names')
    expect(await r.translate(ev('DELETE', '/api/articles/a/comments/8'))).toMatchObject({ kind: 'unmapped', type: '/api/articles/a/comments', id: '8' })
    const kv = await new Kvm(nc).open(names(ns).entityBucket)
    for await (const key of await kv.keys('eu.>')) await kv.purge(key)
    const t = await r.translate(ev('DELETE', '/api/articles/a/comments/7'))
    expect(t).toMatchObject({ kind: 'unmapped', id: '7' })
    expect((t as { detail: string }).detail).toContain('no record of its create')
  })
})

describe('IdentityResolver.onAnswer', () => {
  const h = useNats()
  const schedule = { ...DEFAULT_RETRY, dependencyAttempts: 2 }

  it('learns on 2xx, keeps what it learnt through a 409 redelivery, and decides a DELETE 404 by the records', async () => {
    const nc = await h.connection()
    const r = await IdentityResolver.open(nc, names(uniqueNamespace()), 'eu', { replicas: 1, logger: silentLogger })
    h.defer(async () => r.close())
    const create = ev('POST', '/api/articles/a/comments', '7', 'comment.id')
    expect(await r.onAnswer(create, 5, create.path, 201, { comment: { id: 1007 } }, 1, schedule))
      .toEqual({ kind: 'applied', learnt: { type: '/api/articles/a/comments', sourceId: '7', targetId: '1007', remapped: true }, recorded: false })
    expect(await r.onAnswer(create, 5, create.path, 409, undefined, 2, schedule)).toEqual({ kind: 'classify' })
    const del = ev('DELETE', '/api/articles/a/comments/7')
    expect(await r.translate(del)).toEqual({ kind: 'ok', path: '/api/articles/a/comments/1007' })
    // Sent untranslated (say, by an instance that had not heard of the type yet): never success.
    expect((await r.onAnswer(del, 6, del.path, 404, undefined, 1, schedule)).kind).toBe('retry')
    expect(await r.onAnswer(del, 6, del.path, 404, undefined, 2, schedule)).toMatchObject({ kind: 'dead', reason: 'delete-not-found' })
    expect(await r.onAnswer(del, 6, '/api/articles/a/comments/1007', 204, undefined, 3, schedule)).toEqual({ kind: 'applied', learnt: null, recorded: false })
    expect(await r.onAnswer(del, 6, '/api/articles/a/comments/1007', 404, undefined, 9, schedule)).toEqual({ kind: 'already-applied', why: 'deleted-here' })
    const never = ev('DELETE', '/api/articles/b')
    expect(await r.onAnswer(never, 7, never.path, 404, undefined, 1, schedule)).toEqual({ kind: 'already-applied', why: 'never-seen' })
    expect(await r.onAnswer(ev('PATCH', '/api/articles/b'), 8, '/api/articles/b', 422, undefined, 1, schedule)).toEqual({ kind: 'classify' })
  })
})

describe('regionsync ids map', () => {
  const h = useNats()

  it('gives a region the id an unmapped-id letter lacked, for every instance, and the letter names the command', async () => {
    const ns = uniqueNamespace()
    const r = await IdentityResolver.open(await h.connection(), names(ns), 'eu', { replicas: 1, logger: silentLogger })
    h.defer(async () => r.close())
    await r.learn(ev('POST', '/api/articles', 'a', 'article.slug'), 1, { article: { slug: 'a-x' } }, 'names')
    const unmapped = await r.translate(ev('PUT', '/api/articles/old'))
    expect(unmapped).toMatchObject({ kind: 'unmapped' })
    expect((unmapped as { detail: string }).detail).toContain('regionsync ids map --type /api/articles --source old --target <id>')

    const out: string[] = []
    const io = { out: (l: string) => out.push(l), err: (l: string) => out.push(l), env: {} }
    expect(await runCli(['ids', 'map', '--nats', h.nats.url, '--namespace', ns, '--region', 'eu', '--type', '/api/articles', '--source', 'old', '--target', 'old-7'], io)).toBe(0)
    expect(out).toEqual(['eu: /api/articles/old is /api/articles/old-7 there'])
    expect(await r.translate(ev('PUT', '/api/articles/old'))).toEqual({ kind: 'ok', path: '/api/articles/old-7' })
    expect(await runCli(['ids', 'map', '--nats', h.nats.url, '--region', 'eu', '--type', 'articles', '--source', 'a', '--target', 'b'], io)).toBe(2)
    expect(out.at(-1)).toBe('regionsync: --type: expects a path starting with "/", e.g. /api/articles')
  })
})
