import { randomBytes } from 'node:crypto'
import { connect as tcpConnect } from 'node:net'
import type { StoredDeadLetter } from '@regionsync/replicator'
import {
  DEFAULT_REPLAY_TOLERANCE_MS, EVENT_SIGNATURE_HEADER, IDEMPOTENCY_KEY_HEADER, REPLAY_ORIGIN_HEADER, REPLAY_SIGNATURE_HEADER,
  createEvent, createSigner, decodeEvent, encodeEvent, partitionOf, type RegionsyncEvent
} from '@regionsync/shared'
import { request } from 'undici'
import { describe, expect, it } from 'vitest'
import { runRegionsync } from '../helpers/child-process.js'
import { EventPublisher, newEvent } from '../helpers/events.js'
import { SIGNING_KEY, waitFor } from '../helpers/fixtures.js'
import { useFaultSystem } from './fixture.js'
import type { FaultSystem } from './system.js'
import { expectReplicatorsRunning, verifyRun } from './verify.js'
import { write } from './workload.js'
import { streamMessages } from '../helpers/stream.js'

const faults = useFaultSystem()

const OTHER_KEY = randomBytes(32).toString('hex')

/** A valid event from `us`, as the plugin would make it, to break in one way. */
function base (over: Partial<Parameters<typeof createEvent>[0]> = {}): RegionsyncEvent {
  return newEvent({
    query: '',
    body: JSON.stringify({ user: { id: `bad-${randomBytes(4).toString('hex')}`, name: 'bad' } }),
    resource: '/v3/users/bad',
    ...over
  })
}

const json = (v: unknown): Uint8Array => Buffer.from(JSON.stringify(v))
const withField = (patch: Record<string, unknown>): Uint8Array => json({ ...base(), ...patch })
const without = (field: string): Uint8Array => {
  const e = { ...base() } as Record<string, unknown>
  delete e[field]
  return json(e)
}

/** One event put straight on the stream, and the dead letter it must get in every region. */
interface StreamCase {
  name: string
  payload: Uint8Array
  /** How it is signed: the right key (default), another key, none, or a fixed header value. */
  sign?: 'key' | 'other-key' | 'none' | { header: string }
  reason: StoredDeadLetter['reason']
  /** The dead letter's detail says what is wrong. */
  detail: RegExp
}

const tampered = Buffer.from(encodeEvent(base()))
const STREAM_CASES: StreamCase[] = [
  { name: 'not JSON', payload: Buffer.from('{"v":1,"id":'), reason: 'malformed', detail: /not valid JSON/ },
  { name: 'a JSON array', payload: json([1, 2]), reason: 'malformed', detail: /not a JSON object/ },
  { name: 'JSON null', payload: Buffer.from('null'), reason: 'malformed', detail: /not a JSON object/ },
  { name: 'empty message', payload: new Uint8Array(0), reason: 'malformed', detail: /not valid JSON/ },
  { name: 'binary garbage', payload: randomBytes(64), reason: 'malformed', detail: /not valid JSON/ },
  { name: 'wrong version (2)', payload: withField({ v: 2 }), reason: 'malformed', detail: /unknown event version 2/ },
  { name: 'no version', payload: without('v'), reason: 'malformed', detail: /unknown event version/ },
  { name: 'missing id', payload: without('id'), reason: 'malformed', detail: /id is missing/ },
  { name: 'missing path', payload: without('path'), reason: 'malformed', detail: /path is missing/ },
  { name: 'missing resource', payload: without('resource'), reason: 'malformed', detail: /resource is missing/ },
  { name: 'missing origin', payload: without('origin'), reason: 'malformed', detail: /origin is missing/ },
  { name: 'committedAt not a date', payload: withField({ committedAt: 'yesterday' }), reason: 'malformed', detail: /committedAt/ },
  { name: 'unknown body encoding', payload: withField({ bodyEncoding: 'rot13' }), reason: 'malformed', detail: /bodyEncoding/ },
  { name: 'headers not an object of strings', payload: withField({ headers: { 'x-a': 1 } }), reason: 'malformed', detail: /headers/ },
  { name: 'bad idSegments', payload: withField({ idSegments: [-1] }), reason: 'malformed', detail: /idSegments/ },
  { name: 'unknown method TRACE', payload: withField({ method: 'TRACE' }), reason: 'malformed', detail: /method "TRACE"/ },
  { name: 'unknown method GET', payload: withField({ method: 'GET' }), reason: 'malformed', detail: /method "GET"/ },
  { name: 'unknown method CONNECT', payload: withField({ method: 'CONNECT' }), reason: 'malformed', detail: /method "CONNECT"/ },
  { name: 'unsigned (a client without the signing key)', payload: encodeEvent(base()), sign: 'none', reason: 'bad-signature', detail: /no signature/ },
  { name: 'signed with another key', payload: encodeEvent(base()), sign: 'other-key', reason: 'bad-signature', detail: /does not verify/ },
  { name: 'garbage signature', payload: encodeEvent(base()), sign: { header: 'v1=AAAA' }, reason: 'bad-signature', detail: /does not verify/ },
  {
    name: 'signature of other bytes (tampered event)',
    payload: Buffer.from(tampered.toString('utf8').replace('"resource":"/v3/users/bad"', '"resource":"/v3/users/evil"')),
    sign: { header: createSigner(SIGNING_KEY).signEvent(tampered) },
    reason: 'bad-signature',
    detail: /does not verify/
  },
  { name: 'path to another host (//evil.example)', payload: encodeEvent(base({ path: '//evil.example/v3/users' })), reason: 'bad-path', detail: /single "\/"/ },
  { name: 'absolute URL as path', payload: encodeEvent(base({ path: 'http://evil.example/v3/users' })), reason: 'bad-path', detail: /single "\/"/ },
  { name: 'path climbing with ..', payload: encodeEvent(base({ path: '/v3/../../admin' })), reason: 'bad-path', detail: /leave the target/ },
  { name: 'path climbing with %2e%2e', payload: encodeEvent(base({ path: '/v3/%2e%2e/%2E%2E/admin' })), reason: 'bad-path', detail: /leave the target/ },
  { name: 'path with a backslash', payload: encodeEvent(base({ path: '/v3\\..\\admin' })), reason: 'bad-path', detail: /control character, space/ },
  { name: 'path with an encoded slash', payload: encodeEvent(base({ path: '/v3/users/..%2f..%2fadmin' })), reason: 'bad-path', detail: /leave the target/ },
  { name: 'query with CR LF (request splitting)', payload: encodeEvent(base({ query: 'a=1\r\nHost: evil.example' })), reason: 'bad-path', detail: /control character/ },
  { name: 'header value with CR LF (header injection)', payload: encodeEvent(base({ headers: { 'x-request-source': 'a\r\nAuthorization: Bearer stolen' } })), reason: 'malformed', detail: /x-request-source/ },
  { name: 'header that frames the request (transfer-encoding)', payload: encodeEvent(base({ headers: { 'transfer-encoding': 'chunked' } })), reason: 'malformed', detail: /transfer-encoding/ },
  { name: 'header that routes the request (host)', payload: encodeEvent(base({ headers: { host: 'evil.example' } })), reason: 'malformed', detail: /host/ },
  { name: 'header name that is no token', payload: encodeEvent(base({ headers: { 'x bad:name': 'v' } })), reason: 'malformed', detail: /header name/ },
  { name: 'content type with CR LF', payload: encodeEvent(base({ contentType: 'application/json\r\nX-Injected: 1' })), reason: 'malformed', detail: /contentType/ },
  { name: 'huge body (800 KB, over the target\'s limit)', payload: encodeEvent(base({ body: Buffer.from(JSON.stringify({ user: { name: 'x'.repeat(800_000) } })) })), reason: 'rejected', detail: /413/ },
  { name: 'body the target refuses (empty name)', payload: encodeEvent(base({ body: Buffer.from('{"user":{"name":""}}') })), reason: 'rejected', detail: /400/ },
  { name: 'sealed headers this replicator cannot open', payload: encodeEvent(base({ sealedHeaders: 'v1.AAAA.BBBB' })), reason: 'undecryptable', detail: /encryption key/ }
]

/** One HTTP request to an API's plugin, and the 4xx it must get, with nothing published. */
interface PluginCase {
  name: string
  send: () => Promise<number | null>
  status: number
}

/** Sends raw bytes as an HTTP request; the status of the answer, null when none came. */
async function raw (port: number, text: string): Promise<number | null> {
  return await new Promise((resolve) => {
    const socket = tcpConnect(port, '127.0.0.1')
    let answer = ''
    const done = (): void => {
      socket.destroy()
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(answer)
      resolve(m === null ? null : Number(m[1]))
    }
    socket.setTimeout(5000, done)
    socket.on('data', (d) => { answer += d.toString('latin1'); if (answer.includes('\r\n')) done() })
    socket.on('error', done)
    socket.on('close', done)
    socket.write(text)
  })
}

async function http (url: string, method: string, headers: Record<string, string>, body?: string | Buffer): Promise<number> {
  const res = await request(url, { method: method as 'POST', headers, body })
  await res.body.dump()
  return res.statusCode
}

describe('bad input, fed straight to the stream and to the plugin', () => {
  it(`each of ${STREAM_CASES.length} bad events is dead-lettered with its reason and each bad request gets its 4xx; a good write after each still arrives everywhere; nothing else changes`, async () => {
    const startedAt = Date.now()
    const system = await faults.start({ replicatorsPerRegion: 1 })
    await system.seedProjects()
    const s = system
    const client = { checker: s.checker, credentials: s.credentials }
    const pub = new EventPublisher(s.nc, s.ns, s.options.partitions, SIGNING_KEY)
    const lastSeq = async (): Promise<number> => (await s.jsm.streams.info(s.n.eventStream)).state.last_seq

    /** A client write through the source that lands on `partition`, after the bad input there. */
    let goods = 0
    const goodWriteOn = async (partition: number): Promise<void> => {
      let id = ''
      for (let i = 0; i < 10_000; i++) {
        id = `${s.ns}-good-${goods}-${i}`
        if (partitionOf(`/v3/users/${id}`, s.options.partitions) === partition) break
      }
      goods++
      const w = await write(s.source.url, client, { kind: 'create-user', id, name: 'good', email: `${id}@example.org`, enabled: true })
      expect(w.outcome, `good write ${id}`).toBe('acked')
    }

    // A user whose older update, replayed later, would undo the newer one.
    const rid = `${s.ns}-replayed`
    await write(s.source.url, client, { kind: 'create-user', id: rid, name: 'r0', email: 'r@example.org', enabled: true })
    const older = await write(s.source.url, client, { kind: 'patch-user', id: rid, name: 'r1' })
    await write(s.source.url, client, { kind: 'patch-user', id: rid, name: 'r2' })
    await s.waitForRegions(30_000)

    // ---- the stream
    const expected = new Map<number, StreamCase>()
    for (const [i, c] of STREAM_CASES.entries()) {
      const partition = i % s.options.partitions
      const key = findKey(partition, s.options.partitions)
      const sign = c.sign ?? 'key'
      const ack = await pub.publishRaw(c.payload, {
        resource: key,
        signWith: sign === 'key' ? SIGNING_KEY : sign === 'other-key' ? OTHER_KEY : null,
        ...(typeof sign === 'object' ? { signature: sign.header } : {}),
        msgID: `bad-${s.ns}-${i}`
      })
      expected.set(ack.seq, c)
      await goodWriteOn(partition)
    }

    // Replayed old events: the older update again under a new message id (the replicator knows it
    // applied it), and the very same message again (JetStream drops it).
    const stored = await findEvent(s, older.wid)
    const replayedAck = await pub.publishRaw(stored.data, { resource: stored.event.resource, signature: stored.signature, msgID: `replayed-${stored.event.id}` })
    const sameAck = await pub.publishRaw(stored.data, { resource: stored.event.resource, signature: stored.signature, msgID: stored.event.id })
    expect(sameAck.duplicate, 'the same Nats-Msg-Id again is dropped by JetStream').toBe(true)
    await goodWriteOn(partitionOf(stored.event.resource, s.options.partitions))

    // ---- the plugin
    const source = s.source.url
    const sourcePort = Number(new URL(source).port)
    const auth = { authorization: `Bearer ${s.credentials.bearer}` }
    const jsonAuth = { ...auth, 'content-type': 'application/json' }
    const eu = s.region('eu').api
    const euPort = Number(new URL(eu.url).port)
    const signer = createSigner(SIGNING_KEY)
    const forged = (signature: string, body = '{"user":{"name":"forged"}}'): Promise<number> => http(`${eu.url}/v3/users`, 'POST', {
      'content-type': 'application/json', [IDEMPOTENCY_KEY_HEADER]: stored.event.id, [REPLAY_ORIGIN_HEADER]: 'us', [REPLAY_SIGNATURE_HEADER]: signature
    }, body)
    const genuine = (nowMs: number, body: string): string => signer.signReplay({ eventId: stored.event.id, origin: 'us', method: 'POST', body: Buffer.from(body), seq: null, resource: '' }, nowMs)
    const pluginCases: PluginCase[] = [
      { name: 'malformed JSON', status: 400, send: async () => await http(`${source}/v3/users`, 'POST', jsonAuth, '{"user":') },
      { name: 'JSON that is not an object', status: 400, send: async () => await http(`${source}/v3/users`, 'POST', jsonAuth, '"user"') },
      { name: 'missing required field', status: 400, send: async () => await http(`${source}/v3/users`, 'POST', jsonAuth, '{}') },
      { name: 'field of the wrong type', status: 400, send: async () => await http(`${source}/v3/users`, 'POST', jsonAuth, '{"user":{"name":"x","email":{"a":1}}}') },
      { name: 'body over the event limit (800 KB)', status: 413, send: async () => await http(`${source}/v3/users`, 'POST', jsonAuth, JSON.stringify({ user: { name: 'x'.repeat(800_000) } })) },
      { name: 'huge body (5 MB)', status: 413, send: async () => await http(`${source}/v3/users`, 'POST', jsonAuth, Buffer.alloc(5 * 1024 * 1024, 0x61)) },
      { name: 'unsupported content type', status: 415, send: async () => await http(`${source}/v3/users`, 'POST', { ...auth, 'content-type': 'application/xml' }, '<user/>') },
      { name: 'unknown method PROPFIND', status: 404, send: async () => await http(`${source}/v3/users`, 'PROPFIND', auth) },
      { name: 'invalid method BREW', status: 400, send: async () => await raw(sourcePort, `BREW /v3/users HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${s.credentials.bearer}\r\nContent-Length: 0\r\n\r\n`) },
      { name: 'path climbing with ..', status: 404, send: async () => await raw(sourcePort, `POST /../../v3/users HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${s.credentials.bearer}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}`) },
      { name: 'path naming another host', status: 404, send: async () => await raw(sourcePort, `POST //evil.example/v3/users HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${s.credentials.bearer}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}`) },
      { name: 'header injection (bare CR in a value)', status: 400, send: async () => await raw(sourcePort, `POST /v3/users HTTP/1.1\r\nHost: x\r\nX-Evil: a\rInjected: b\r\nContent-Length: 0\r\n\r\n`) },
      { name: 'request smuggling (Content-Length and Transfer-Encoding)', status: 400, send: async () => await raw(sourcePort, `POST /v3/users HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`) },
      { name: 'no credentials', status: 401, send: async () => await http(`${source}/v3/users`, 'POST', { 'content-type': 'application/json' }, '{"user":{"name":"x"}}') },
      { name: 'wrong credentials', status: 401, send: async () => await http(`${source}/v3/users`, 'POST', { 'content-type': 'application/json', authorization: 'Bearer nope' }, '{"user":{"name":"x"}}') },
      { name: 'forged replay headers at the source', status: 401, send: async () => await http(`${source}/v3/users`, 'POST', { 'content-type': 'application/json', [IDEMPOTENCY_KEY_HEADER]: 'x', [REPLAY_ORIGIN_HEADER]: 'eu', [REPLAY_SIGNATURE_HEADER]: 't=1,v1=x' }, '{"user":{"name":"x"}}') },
      { name: 'replay with a garbage signature at a target', status: 401, send: async () => await forged('t=1,v1=AAAA') },
      { name: 'replay signed with another key at a target', status: 401, send: async () => await forged(createSigner(OTHER_KEY).signReplay({ eventId: stored.event.id, origin: 'us', method: 'POST', body: Buffer.from('{"user":{"name":"forged"}}'), seq: null, resource: '' })) },
      { name: 'replay with a stale genuine signature at a target', status: 401, send: async () => await forged(genuine(Date.now() - 2 * DEFAULT_REPLAY_TOLERANCE_MS, '{"user":{"name":"forged"}}')) },
      { name: 'genuine replay signature over another body', status: 401, send: async () => await forged(genuine(Date.now(), '{"user":{"name":"signed"}}'), '{"user":{"name":"swapped"}}') },
      { name: 'replay headers on an unknown method at a target', status: 401, send: async () => await raw(euPort, `PROPFIND /v3/users HTTP/1.1\r\nHost: x\r\n${IDEMPOTENCY_KEY_HEADER}: ${stored.event.id}\r\nContent-Length: 0\r\n\r\n`) }
    ]
    const pluginResults: Array<{ name: string, status: number | null, want: number, published: number }> = []
    for (const c of pluginCases) {
      const before = await lastSeq()
      const status = await c.send()
      pluginResults.push({ name: c.name, status, want: c.status, published: await lastSeq() - before })
      // The APIs still answer, and take the next good write.
      expect(await http(`${source}/healthz`, 'GET', {})).toBe(200)
      expect(await http(`${eu.url}/healthz`, 'GET', {})).toBe(200)
      await goodWriteOn(pluginResults.length % s.options.partitions)
    }

    // ---- every region: one letter per bad event, with its reason, and nothing else
    const letters = await waitFor('a dead letter for every bad event in every region', async () => {
      const all = await s.deadLetters()
      return s.regions.every((r) => all.filter((l) => l.region === r.name).length >= expected.size) ? all : undefined
    }, 60_000).catch(async () => await s.deadLetters())
    const letterOf = (region: string, seq: number): StoredDeadLetter | undefined => letters.find((l) => l.region === region && l.streamSeq === seq)
    console.info([
      'dead letters:',
      ...[...expected].flatMap(([seq, c]) => s.regions.map((r) => {
        const l = letterOf(r.name, seq)
        return `  ${r.name} ${c.name}: ${l === undefined ? 'NO LETTER' : `${l.reason}: ${l.detail}`}`
      })),
      'plugin:',
      ...pluginResults.map((p) => `  ${p.name}: ${p.status} (published ${p.published})`)
    ].join('\n'))
    const report = await verifyRun(s, {
      order: 8,
      fault: `bad input: ${STREAM_CASES.length + 2} events on the stream, ${pluginCases.length} requests to the plugin`,
      startedAt,
      hasFault: false,
      notes: () => `${STREAM_CASES.length} dead-lettered with their reason in each region, 2 replays of an old event not applied again, ${pluginCases.length} answered 4xx and published nothing; a good write after each arrived everywhere`,
      // Checked one by one below.
      deadLetters: () => {}
    })
    for (const r of s.regions) {
      for (const [seq, c] of expected) {
        const letter = letterOf(r.name, seq)
        expect(letter, `${r.name}: a dead letter for "${c.name}"`).toBeDefined()
        expect(letter!.reason, `${r.name}: reason for "${c.name}" (${letter!.detail})`).toBe(c.reason)
        expect(letter!.detail, `${r.name}: detail for "${c.name}"`).toMatch(c.detail)
      }
      const mine = letters.filter((l) => l.region === r.name).map((l) => l.streamSeq).sort((a, b) => a - b)
      // A letter holds the event's bytes for a replay, unless they do not fit in one message.
      for (const l of letters.filter((x) => x.region === r.name)) expect(l.payload === null, `${expected.get(l.streamSeq)?.name} letter without payload`).toBe(l.detail.includes('413'))
      expect(mine, `${r.name}: no other letters (the replayed old event is skipped, not dead-lettered)`).toEqual([...expected.keys()].sort((a, b) => a - b))
    }
    for (const p of pluginResults) {
      expect(p.status, p.name).toBe(p.want)
      expect(p.published, `${p.name}: published nothing`).toBe(0)
    }
    // The large event's letter does not carry it: `dlq replay` reads it from the stream and
    // evaluates it again (the target still refuses it).
    const huge = letters.find((l) => l.region === 'eu' && l.detail.includes('413'))!
    const replay = await runRegionsync(['dlq', 'replay', '--region', 'eu', '--id', huge.eventId!, '--nats', faults.nats.url, '--namespace', s.ns], { timeoutMs: 30_000 })
    expect(replay.stdout.trim(), replay.stderr).toBe(`${huge.eventId}  failed  rejected: target answered 413`)
    expect(replay.code).toBe(1)
    // The older update was not applied a second time: the newer name stands everywhere.
    for (const r of s.regions) expect((await r.api.state()).users.find((u) => u.id === rid)?.name, r.name).toBe('r2')
    expectReplicatorsRunning(s)
    expect(STREAM_CASES.length + pluginCases.length).toBeGreaterThanOrEqual(25)
    expect(report.acknowledged).toBe(goods + 3 + 3)
    expect(replayedAck.duplicate).toBe(false)
  })
})

/** A resource key on `partition`. */
function findKey (partition: number, partitions: number): string {
  for (let i = 0; i < 100_000; i++) {
    if (partitionOf(`/v3/users/bad-${i}`, partitions) === partition) return `/v3/users/bad-${i}`
  }
  throw new Error(`no key on partition ${partition}`)
}

/** The event of the client's write `wid`, as stored on the stream, with its signature. */
async function findEvent (s: FaultSystem, wid: string): Promise<{ event: RegionsyncEvent, data: Uint8Array, signature: string }> {
  for (const m of await streamMessages(s.jsm, s.n.eventStream)) {
    let event: RegionsyncEvent
    try {
      event = decodeEvent(m.data)
    } catch {
      continue
    }
    if (new URLSearchParams(event.query).get('w') === wid) return { event, data: m.data, signature: m.header.get(EVENT_SIGNATURE_HEADER) }
  }
  throw new Error(`no event for ${wid}`)
}
