import { describe, expect, it } from 'vitest'
import { createEvent, createSigner, encodeEvent } from '@regionsync/shared'
import { admit, judge, type Sent } from '../../services/replicator/src/event-verdict.js'
import { DEFAULT_ALREADY_APPLIED, DEFAULT_RETRY } from '../../services/replicator/src/retry-policy.js'

const KEY = 'a-signing-key-of-at-least-32-characters!!'
const signer = createSigner(KEY)
const settings = { retry: DEFAULT_RETRY, alreadyApplied: DEFAULT_ALREADY_APPLIED }
const answered = (status: number, headers: Sent['headers'] = {}): Sent => ({ status, headers, excerpt: 'why', failure: null, aborted: false })

describe('admit: what an event\'s bytes allow', () => {
  const data = encodeEvent(createEvent({ origin: 'us', method: 'POST', path: '/v3/users', resource: '/v3/users/1', body: Buffer.from('{}') }))

  it('a signed event from another region is replayed; one from this region is done without a replay', () => {
    expect(admit(data, signer.signEvent(data), 'eu', signer).kind).toBe('replay')
    expect(admit(data, signer.signEvent(data), 'us', signer)).toEqual({ kind: 'done', outcome: 'own-origin' })
  })

  it('undecodable bytes are malformed; a wrong signature is bad-signature', () => {
    expect(admit(Buffer.from('{nope'), 'v1=x', 'eu', signer)).toMatchObject({ kind: 'dead', reason: 'malformed' })
    expect(admit(data, createSigner('another-key-that-is-at-least-32-characters').signEvent(data), 'eu', signer)).toMatchObject({ kind: 'dead', reason: 'bad-signature' })
  })
})

describe('judge: what the target\'s answer means', () => {
  it('2xx is applied; 208 with the superseded outcome is done without counting as applied', () => {
    expect(judge('POST', answered(201), 1, settings)).toEqual({ kind: 'done', outcome: 'applied' })
    expect(judge('PATCH', answered(208, { 'x-regionsync-outcome': 'superseded' }), 1, settings)).toEqual({ kind: 'done', outcome: 'superseded' })
  })

  it('5xx and no answer are retried with a growing delay; past maxAttempts it is a dead letter', () => {
    const first = judge('PUT', answered(503), 1, settings, () => 0)
    const later = judge('PUT', answered(503), 6, settings, () => 0)
    expect(first.kind).toBe('retry')
    expect(later.kind === 'retry' && first.kind === 'retry' && later.delayMs > first.delayMs).toBe(true)
    const bounded = { ...settings, retry: { ...DEFAULT_RETRY, maxAttempts: 3 } }
    expect(judge('PUT', { status: null, headers: {}, excerpt: '', failure: 'ECONNREFUSED', aborted: false }, 3, bounded)).toMatchObject({ kind: 'dead', reason: 'too-many-attempts' })
  })

  it('409 from the target\'s guard (an earlier delivery still running) is retried, not taken as an applied create', () => {
    expect(judge('POST', answered(409, { 'x-regionsync-outcome': 'in-progress', 'retry-after': '1' }), 1, settings)).toMatchObject({ kind: 'retry', delayMs: 1000 })
    expect(judge('POST', answered(409), 1, settings)).toEqual({ kind: 'done', outcome: 'already-applied' })
  })

  it('a 4xx other than the already-applied ones is a dead letter with its status and excerpt', () => {
    expect(judge('POST', answered(422), 1, settings)).toEqual({ kind: 'dead', reason: 'rejected', detail: 'target answered 422', status: 422, excerpt: 'why' })
  })
})
