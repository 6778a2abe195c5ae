import { randomBytes } from 'node:crypto'
import {
  BadSignatureError, DEFAULT_REPLAY_TOLERANCE_MS, ErrorCode, EVENT_VERSION, InvalidOptionError, MalformedEventError, MIN_KEY_LENGTH,
  childTraceparent, createEvent, createSigner, decodeEvent, encodeEvent, eventBody, openEventBody, parseSigningKey, parseStartFrom, parseTraceparent,
  partitionOf, traceFromHeaders,
  type RegionsyncEvent
} from '@regionsync/shared'
import { describe, expect, it } from 'vitest'
import { newEvent } from './helpers/events.js'

const KEY = randomBytes(32).toString('hex')

function sample (overrides: Partial<Parameters<typeof createEvent>[0]> = {}): RegionsyncEvent {
  return newEvent({
    query: 'domain=default',
    body: '{"user":{"name":"ann"}}',
    resource: '/v3/users/u1',
    headers: { 'x-request-source': 'batch' },
    created: { id: 'u1', field: 'user.id', mode: 'inject' },
    ...overrides
  })
}

/** Encodes a hand-made event object the way a broken or foreign producer would put it on the stream. */
function raw (value: unknown): Uint8Array {
  return Buffer.from(typeof value === 'string' ? value : JSON.stringify(value))
}

/** What `fn` threw; undefined when it returned. */
function thrownBy (fn: () => unknown): unknown {
  try {
    fn()
  } catch (err) {
    return err
  }
  return undefined
}

function expectMalformed (data: Uint8Array, message: RegExp): void {
  const caught = thrownBy(() => decodeEvent(data))
  expect(caught).toBeInstanceOf(MalformedEventError)
  expect(caught).toMatchObject({ code: 'REGIONSYNC_E_MALFORMED_EVENT', message: expect.stringMatching(message) })
}

describe('event format', () => {
  it('round-trips a JSON body as text, with every field intact', () => {
    const event = sample({ committedAt: new Date('2026-01-31T12:00:00.000Z') })
    const decoded = decodeEvent(encodeEvent(event))
    expect(decoded).toEqual(event)
    expect(decoded.v).toBe(EVENT_VERSION)
    expect(decoded.bodyEncoding).toBe('utf8')
    expect(decoded.body).toBe('{"user":{"name":"ann"}}')
    expect(decoded.committedAt).toBe('2026-01-31T12:00:00.000Z')
    expect(decoded.id).toMatch(/^[0-9a-f-]{36}$/)
  })

  it('carries non-ASCII UTF-8 text byte for byte', () => {
    const body = Buffer.from('{"name":"Zoë 👩‍💻 \\u0000","note":"line\\nbreak"}', 'utf8')
    const decoded = decodeEvent(encodeEvent(sample({ body })))
    expect(decoded.bodyEncoding).toBe('utf8')
    expect(eventBody(decoded)?.equals(body)).toBe(true)
  })

  it('carries a binary body byte for byte as base64', () => {
    const body = Buffer.concat([Buffer.from([0xff, 0xfe, 0x00, 0x80, 0xc3, 0x28]), randomBytes(4096)])
    const decoded = decodeEvent(encodeEvent(sample({ body, contentType: 'application/octet-stream' })))
    expect(decoded.bodyEncoding).toBe('base64')
    expect(eventBody(decoded)?.equals(body)).toBe(true)
  })

  it('keeps an event within 4/3 of its body even when the text would need heavy JSON escaping', () => {
    // Valid UTF-8 made of control characters: each becomes \u00XX (6 bytes) in JSON, so base64 wins.
    const body = Buffer.alloc(3000, 0x01)
    const event = sample({ body })
    expect(event.bodyEncoding).toBe('base64')
    expect(eventBody(decodeEvent(encodeEvent(event)))?.equals(body)).toBe(true)
    // The envelope of an empty body says "utf8"; this one says "base64", two bytes more.
    const envelope = encodeEvent(sample({ body: Buffer.alloc(0) })).length + 2
    expect(encodeEvent(event).length).toBeLessThanOrEqual(envelope + Math.ceil(body.length / 3) * 4)
  })

  it('round-trips a null body as null, and an empty body as empty', () => {
    const none = decodeEvent(encodeEvent(sample({ body: null, contentType: null, created: null })))
    expect(none.body).toBeNull()
    expect(eventBody(none)).toBeNull()
    expect(none.contentType).toBeNull()
    expect(none.created).toBeNull()
    const empty = decodeEvent(encodeEvent(sample({ body: Buffer.alloc(0) })))
    expect(eventBody(empty)?.length).toBe(0)
  })

  it('fills the defaults a minimal event needs', () => {
    const e = createEvent({ origin: 'eu', method: 'DELETE', path: '/v3/users/u1', resource: '/v3/users/u1' })
    expect(decodeEvent(encodeEvent(e))).toMatchObject({ query: '', contentType: null, body: null, headers: {}, created: null })
  })
})

describe('sealed bodies', () => {
  const key = randomBytes(32)
  const body = Buffer.from('{"user":{"name":"ann","password":"hunter2"}}')

  it('travel encrypted and open with the key, byte for byte, through encoding and decoding', () => {
    const event = sample({ body, sealBodyWith: key })
    expect(event.bodyEncoding).toBe('sealed')
    const data = encodeEvent(event)
    expect(Buffer.from(data).includes('hunter2')).toBe(false)
    const decoded = decodeEvent(data)
    expect(openEventBody(decoded, key)?.equals(body)).toBe(true)
    // An unsealed event opens without a key.
    expect(openEventBody(sample({ body }), undefined)?.equals(body)).toBe(true)
    expect(openEventBody(sample({ body: null, sealBodyWith: key }), key)).toBeNull()
  })

  it('refuse to open without the key, with another key, or moved to another event; eventBody refuses them', () => {
    const event = sample({ body, sealBodyWith: key })
    expect(() => openEventBody(event, undefined)).toThrow(MalformedEventError)
    expect(() => openEventBody(event, randomBytes(32))).toThrow(/does not open/)
    expect(() => openEventBody({ ...event, id: 'another-event' }, key)).toThrow(/does not open/)
    expect(() => eventBody(event)).toThrow(/sealed/)
  })

  it('a sealed body must be base64url text', () => {
    const e = JSON.parse(JSON.stringify(sample({ body, sealBodyWith: key }))) as Record<string, unknown>
    expectMalformed(raw({ ...e, body: null }), /sealed body/)
    expectMalformed(raw({ ...e, body: 'not base64url!' }), /sealed body/)
    expectMalformed(raw({ ...e, bodyEncoding: 'rot13' }), /bodyEncoding/)
  })
})

describe('decodeEvent rejects what it cannot trust', () => {
  const good = (): Record<string, unknown> => JSON.parse(JSON.stringify(sample())) as Record<string, unknown>
  const without = (field: string): Record<string, unknown> => {
    const e = good()
    delete e[field]
    return e
  }

  it('bad JSON', () => expectMalformed(raw('{"v":1,'), /not valid JSON/))
  it('bytes that are not text at all', () => expectMalformed(new Uint8Array([0xff, 0x00, 0x7b]), /not valid JSON/))
  it('a JSON value that is not an object', () => {
    expectMalformed(raw('[1,2]'), /not a JSON object/)
    expectMalformed(raw('null'), /not a JSON object/)
    expectMalformed(raw('"event"'), /not a JSON object/)
  })
  it('an unknown version', () => {
    expectMalformed(raw({ ...good(), v: 2 }), /unknown event version 2/)
    expectMalformed(raw(without('v')), /unknown event version/)
  })
  it('a missing or empty id', () => {
    expectMalformed(raw(without('id')), /\bid is missing/)
    expectMalformed(raw({ ...good(), id: '' }), /\bid is missing/)
  })
  it('a missing origin, path or resource', () => {
    expectMalformed(raw(without('origin')), /origin/)
    expectMalformed(raw(without('path')), /path/)
    expectMalformed(raw(without('resource')), /resource/)
  })
  it('a method that is not a mutation', () => {
    expectMalformed(raw({ ...good(), method: 'GET' }), /method "GET" is not one of POST, PUT, PATCH, DELETE/)
    expectMalformed(raw({ ...good(), method: 'post' }), /method/)
  })
  it('a bad bodyEncoding', () => {
    expectMalformed(raw({ ...good(), bodyEncoding: 'hex' }), /bodyEncoding/)
    expectMalformed(raw(without('bodyEncoding')), /bodyEncoding/)
  })
  it('a body or contentType that is not a string', () => {
    expectMalformed(raw({ ...good(), body: { user: {} } }), /body must be a string or null/)
    expectMalformed(raw({ ...good(), contentType: 1 }), /contentType/)
  })
  it('bad headers', () => {
    expectMalformed(raw({ ...good(), headers: null }), /headers must be an object of strings/)
    expectMalformed(raw({ ...good(), headers: ['a'] }), /headers/)
    expectMalformed(raw({ ...good(), headers: { 'x-a': 1 } }), /headers/)
    expectMalformed(raw(without('headers')), /headers/)
  })
  it('a bad created', () => {
    expectMalformed(raw({ ...good(), created: { id: 'u1', field: 'id', mode: 'guess' } }), /created must be null or/)
    expectMalformed(raw({ ...good(), created: { id: 7, field: 'id', mode: 'inject' } }), /created/)
    expectMalformed(raw({ ...good(), created: 'u1' }), /created/)
    expectMalformed(raw(without('created')), /created/)
  })
  it('a committedAt that is not a date', () => {
    expectMalformed(raw({ ...good(), committedAt: 'yesterday' }), /committedAt is not a date/)
    expectMalformed(raw(without('committedAt')), /committedAt/)
  })
  it('a trace that is not a valid W3C trace context (it becomes headers of the replay)', () => {
    const tp = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'
    expectMalformed(raw({ ...good(), trace: null }), /trace must be an object/)
    expectMalformed(raw({ ...good(), trace: tp }), /trace must be an object/)
    expectMalformed(raw({ ...good(), trace: {} }), /trace.traceparent/)
    expectMalformed(raw({ ...good(), trace: { traceparent: tp.toUpperCase() } }), /trace.traceparent/)
    expectMalformed(raw({ ...good(), trace: { traceparent: `00-${'0'.repeat(32)}-00f067aa0ba902b7-01` } }), /trace.traceparent/)
    expectMalformed(raw({ ...good(), trace: { traceparent: `ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01` } }), /trace.traceparent/)
    expectMalformed(raw({ ...good(), trace: { traceparent: tp, tracestate: 'a=1\r\nx-injected: 1' } }), /trace.tracestate/)
    expectMalformed(raw({ ...good(), trace: { traceparent: tp, tracestate: 'a='.padEnd(513, 'b') } }), /trace.tracestate/)
    expectMalformed(raw({ ...good(), trace: { traceparent: tp, baggage: 'x' } }), /unknown field "baggage"/)
  })
})

describe('trace context', () => {
  const tp = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'

  it('an event carries the trace it was given, decodes it, and encodes exactly as before without one', () => {
    const traced = sample({ trace: { traceparent: tp, tracestate: 'congo=t61rcWkgMzE' } })
    expect(decodeEvent(encodeEvent(traced)).trace).toEqual({ traceparent: tp, tracestate: 'congo=t61rcWkgMzE' })
    expect('trace' in sample()).toBe(false)
    expect('trace' in sample({ trace: null })).toBe(false)
  })

  it('reads the request headers as the W3C spec says: invalid traceparent ignored, tracestate with it', () => {
    expect(traceFromHeaders({ traceparent: tp })).toEqual({ traceparent: tp })
    expect(traceFromHeaders({ traceparent: tp, tracestate: ['a=1', 'b=2'] })).toEqual({ traceparent: tp, tracestate: 'a=1,b=2' })
    expect(traceFromHeaders({ traceparent: 'garbage', tracestate: 'a=1' })).toBeNull()
    expect(traceFromHeaders({ tracestate: 'a=1' })).toBeNull()
    // A later version may append fields; a version-00 reader keeps the four it knows.
    expect(traceFromHeaders({ traceparent: `01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-cafe` })).toEqual({ traceparent: tp })
    expect(traceFromHeaders({ traceparent: `${tp}-cafe` })).toBeNull()
  })

  it('a child keeps the trace and its flags, with a new span id', () => {
    const child = parseTraceparent(childTraceparent(tp))
    expect(child?.traceId).toBe('4bf92f3577b34da6a3ce929d0e0e4736')
    expect(child?.flags).toBe(1)
    expect(child?.spanId).toMatch(/^[0-9a-f]{16}$/)
    expect(child?.spanId).not.toBe('00f067aa0ba902b7')
    expect(childTraceparent('nonsense')).toBeNull()
  })
})

describe('event signatures', () => {
  const signer = createSigner(KEY)
  const payload = encodeEvent(sample())

  it('verifies a genuine signature', () => {
    const sig = signer.signEvent(payload)
    expect(sig).toMatch(/^v1=[A-Za-z0-9_-]{43}$/)
    expect(() => signer.verifyEvent(payload, sig)).not.toThrow()
    expect(() => createSigner(KEY).verifyEvent(payload, sig)).not.toThrow()
  })

  it('refuses a tampered payload', () => {
    const sig = signer.signEvent(payload)
    const tampered = Buffer.from(Buffer.from(payload).toString().replace('"origin":"us"', '"origin":"eu"'))
    expect(Buffer.from(tampered).equals(Buffer.from(payload))).toBe(false)
    expect(() => signer.verifyEvent(tampered, sig)).toThrow(BadSignatureError)
    try {
      signer.verifyEvent(tampered, sig)
    } catch (err) {
      expect((err as BadSignatureError).code).toBe(ErrorCode.BadSignature)
      expect((err as Error).message).toMatch(/does not verify/)
    }
  })

  it('refuses a missing signature', () => {
    expect(() => signer.verifyEvent(payload, undefined)).toThrow(/has no signature/)
    expect(() => signer.verifyEvent(payload, '')).toThrow(BadSignatureError)
  })

  it('refuses a signature made with another key, and garbage', () => {
    const other = createSigner(randomBytes(32).toString('hex'))
    expect(() => signer.verifyEvent(payload, other.signEvent(payload))).toThrow(BadSignatureError)
    expect(() => signer.verifyEvent(payload, 'v1=nope')).toThrow(BadSignatureError)
  })
})

describe('replay signatures', () => {
  const signer = createSigner(KEY)
  const replay = { eventId: 'e-1', origin: 'us', method: 'POST', body: Buffer.from('{"user":{"name":"ann"}}'), seq: 41 as number | null, resource: '/v3/users/u1' }
  const now = Date.parse('2026-01-31T12:00:00Z')

  it('accepts a genuine replay signature, in either method case', () => {
    const header = signer.signReplay(replay, now)
    expect(header).toMatch(/^t=\d+,v1=/)
    expect(signer.verifyReplay(replay, header, now)).toBe(true)
    expect(signer.verifyReplay({ ...replay, method: 'post' }, header, now + 1000)).toBe(true)
  })

  it('accepts a bodyless replay', () => {
    const r = { ...replay, method: 'DELETE', body: null }
    expect(signer.verifyReplay(r, signer.signReplay(r, now), now)).toBe(true)
  })

  it('refuses the signature for another body, method, id, origin, sequence or resource', () => {
    const header = signer.signReplay(replay, now)
    expect(signer.verifyReplay({ ...replay, body: Buffer.from('{"user":{"name":"eve"}}') }, header, now)).toBe(false)
    expect(signer.verifyReplay({ ...replay, body: null }, header, now)).toBe(false)
    expect(signer.verifyReplay({ ...replay, method: 'PUT' }, header, now)).toBe(false)
    expect(signer.verifyReplay({ ...replay, eventId: 'e-2' }, header, now)).toBe(false)
    expect(signer.verifyReplay({ ...replay, origin: 'eu' }, header, now)).toBe(false)
    // The target's sequence fence trusts these two, so a replay cannot be made to look newer.
    expect(signer.verifyReplay({ ...replay, seq: 42 }, header, now)).toBe(false)
    expect(signer.verifyReplay({ ...replay, seq: null }, header, now)).toBe(false)
    expect(signer.verifyReplay({ ...replay, resource: '/v3/users/u2' }, header, now)).toBe(false)
  })

  it('refuses a signature older (or further ahead) than the tolerance', () => {
    const header = signer.signReplay(replay, now)
    expect(signer.verifyReplay(replay, header, now + DEFAULT_REPLAY_TOLERANCE_MS)).toBe(true)
    expect(signer.verifyReplay(replay, header, now + DEFAULT_REPLAY_TOLERANCE_MS + 1)).toBe(false)
    expect(signer.verifyReplay(replay, header, now - DEFAULT_REPLAY_TOLERANCE_MS - 1)).toBe(false)
    const strict = createSigner(KEY, 1000)
    expect(strict.verifyReplay(replay, strict.signReplay(replay, now), now + 1001)).toBe(false)
  })

  it('refuses a timestamp that was changed to look fresh', () => {
    const header = signer.signReplay(replay, now - 10 * 60_000)
    const refreshed = header.replace(/^t=\d+/, `t=${now}`)
    expect(signer.verifyReplay(replay, refreshed, now)).toBe(false)
  })

  it('refuses garbage, a missing header and another key', () => {
    expect(signer.verifyReplay(replay, undefined, now)).toBe(false)
    expect(signer.verifyReplay(replay, '', now)).toBe(false)
    expect(signer.verifyReplay(replay, 'garbage', now)).toBe(false)
    expect(signer.verifyReplay(replay, `t=${now},v1=${'A'.repeat(43)}`, now)).toBe(false)
    expect(signer.verifyReplay(replay, `t=${now},v1=`, now)).toBe(false)
    const other = createSigner(randomBytes(32).toString('hex'))
    expect(signer.verifyReplay(replay, other.signReplay(replay, now), now)).toBe(false)
  })
})

describe('parseSigningKey', () => {
  it('accepts a key of the minimum length', () => {
    const key = 'k'.repeat(MIN_KEY_LENGTH)
    expect(parseSigningKey(key)).toBe(key)
  })

  it('refuses a short or missing key, naming the option', () => {
    for (const bad of ['k'.repeat(MIN_KEY_LENGTH - 1), '', undefined, 42]) {
      const caught = thrownBy(() => parseSigningKey(bad))
      expect(caught).toBeInstanceOf(InvalidOptionError)
      expect(caught).toMatchObject({
        code: 'REGIONSYNC_E_INVALID_OPTION',
        option: 'signingKey',
        message: expect.stringMatching(/^signingKey: expects a secret of at least 32 characters/)
      })
    }
    expect(() => parseSigningKey('short', '--signing-key')).toThrow(/^--signing-key: /)
    expect(() => createSigner('short')).toThrow(InvalidOptionError)
  })
})

describe('partitionOf', () => {
  it('is stable across processes and versions (FNV-1a)', () => {
    // Golden values: a change here moves live keys to other partitions and breaks order in flight.
    expect(partitionOf('', 16)).toBe(5)
    expect(partitionOf('', 256)).toBe(197)
    expect(partitionOf('/v3/users/abc', 16)).toBe(1)
    expect(partitionOf('/v3/users/abc', 256)).toBe(209)
    expect(partitionOf('/v3/projects/p1', 16)).toBe(10)
    expect(partitionOf('/v3/projects/p1', 256)).toBe(250)
    expect(partitionOf('users/42', 16)).toBe(6)
    expect(partitionOf('users/42', 16)).toBe(partitionOf('users/' + String(42), 16))
  })

  it('stays within range and uses every partition', () => {
    for (const partitions of [1, 2, 7, 16, 256]) {
      const seen = new Set<number>()
      for (let i = 0; i < 4000; i++) {
        const p = partitionOf(`/v3/users/${i}`, partitions)
        expect(Number.isInteger(p) && p >= 0 && p < partitions).toBe(true)
        seen.add(p)
      }
      expect(seen.size).toBe(partitions)
    }
  })
})

describe('parseStartFrom', () => {
  it('accepts first, new, seq:N and time:ISO', () => {
    expect(parseStartFrom('first')).toEqual({ kind: 'first' })
    expect(parseStartFrom('new')).toEqual({ kind: 'new' })
    expect(parseStartFrom('seq:1')).toEqual({ kind: 'seq', seq: 1 })
    expect(parseStartFrom('seq:12345')).toEqual({ kind: 'seq', seq: 12345 })
    const t = parseStartFrom('time:2026-01-31T12:00:00Z')
    expect(t.kind).toBe('time')
    expect(t.kind === 'time' && t.time.toISOString()).toBe('2026-01-31T12:00:00.000Z')
  })

  it('refuses junk with a message that says what it expects', () => {
    for (const junk of ['', 'last', 'FIRST', 'seq:', 'seq:0', 'seq:-1', 'seq:1.5', 'seq:abc', 'time:', 'time:someday', '5']) {
      let caught: unknown
      try {
        parseStartFrom(junk)
      } catch (err) {
        caught = err
      }
      expect(caught, junk).toBeInstanceOf(InvalidOptionError)
      expect((caught as InvalidOptionError).option).toBe('--from')
      expect((caught as Error).message).toMatch(/^--from: expects first, new, seq:N \(N >= 1\) or time:ISO-8601/)
    }
    expect(() => parseStartFrom('junk', 'REGIONSYNC_FROM')).toThrow(/^REGIONSYNC_FROM: /)
  })
})
