import { randomBytes } from 'node:crypto'
import { DEV_SIGNING_KEY, createEvent, createSigner, encodeEvent } from '@regionsync/shared'
import { describe, expect, it } from 'vitest'
import { EventPublisher } from '../helpers/events.js'
import { SIGNING_KEY, waitFor } from '../helpers/fixtures.js'
import { ms } from './durations.js'
import { scanForSecrets } from './scan.js'
import { useFaultSystem } from './fixture.js'
import { secretsOf, sleep, verifyRun } from './verify.js'

const faults = useFaultSystem()

/** How a client without the signing key may try to sign a write of its own. */
const FORGERIES = ['unsigned', 'guessed key', 'dev key', 'signature of a genuine event'] as const
type Forgery = (typeof FORGERIES)[number]

describe('security: credentials never stored in clear; writes without the signing key never applied', () => {
  it('after a run with end-user credentials on every write and forged events on the stream, no stored message or log holds a credential, and no forged event was applied', async () => {
    const { system: s, load, startedAt } = await faults.startUnderLoad({}, { workload: { writers: 6 } })
    const pub = new EventPublisher(s.nc, s.ns, s.options.partitions, SIGNING_KEY)
    const marker = `forged-${randomBytes(6).toString('hex')}`
    const forged: Array<{ seq: number, how: Forgery, id: string }> = []
    const genuine = createEvent({ origin: 'us', method: 'POST', path: '/v3/users', body: Buffer.from('{"user":{"name":"genuine"}}'), contentType: 'application/json', resource: '/v3/users/genuine' })
    const genuineSignature = createSigner(SIGNING_KEY).signEvent(encodeEvent(genuine))
    const until = Date.now() + ms(20_000, 8000)
    for (let i = 0; Date.now() < until; i++) {
      await sleep(500)
      const how = FORGERIES[i % FORGERIES.length]!
      const id = `${marker}-${i}`
      // A well-formed write that would create a user everywhere, were it applied.
      const event = createEvent({
        origin: 'us', method: 'POST', path: '/v3/users', query: `w=${id}`, contentType: 'application/json',
        body: Buffer.from(JSON.stringify({ user: { id, name: marker } })), resource: `/v3/users/${id}`
      })
      const ack = await pub.publishRaw(encodeEvent(event), {
        resource: event.resource,
        ...(how === 'unsigned' ? { signWith: null } : {}),
        ...(how === 'guessed key' ? { signWith: 'regionsync-signing-key-guess-0123456789abcdef' } : {}),
        ...(how === 'dev key' ? { signWith: DEV_SIGNING_KEY } : {}),
        ...(how === 'signature of a genuine event' ? { signature: genuineSignature } : {}),
        msgID: event.id
      })
      forged.push({ seq: ack.seq, how, id })
    }
    await load.stop()

    const letters = await waitFor('every forged event dead-lettered in every region', async () => {
      const all = await s.deadLetters()
      return all.length >= forged.length * s.regions.length ? all : undefined
    }, 60_000).catch(async () => await s.deadLetters())
    await verifyRun(s, {
      order: 9,
      fault: 'security: credentials and forged events',
      startedAt,
      hasFault: false,
      notes: () => `Authorization, X-Auth-Token and Cookie sent on every write, found in no stored message or log; ${forged.length} forged events (${FORGERIES.join(', ')}) dead-lettered bad-signature, applied 0 times`,
      deadLetters: () => {}
    })
    for (const r of s.regions) {
      for (const f of forged) {
        const letter = letters.find((l) => l.region === r.name && l.streamSeq === f.seq)
        expect(letter?.reason, `${r.name}: forged event (${f.how})`).toBe('bad-signature')
      }
      expect(letters.filter((l) => l.region === r.name)).toHaveLength(forged.length)
      const state = await r.api.state()
      expect(state.users.filter((u) => u.name === marker || u.id.startsWith(marker)), `${r.name}: forged users`).toEqual([])
      expect(r.api.replays.filter((a) => a.wid?.startsWith(marker) === true), `${r.name}: requests for forged events`).toEqual([])
    }

    // The scan looks where it should: it finds what is there (a user id in events, the forged
    // marker inside a dead letter's base64 payload), so finding no credential means something.
    const some = s.checker.ackedIds()[0]!
    const control = await scanForSecrets(s.jsm, s.n, [some, marker])
    expect(control.found.some((f) => f.startsWith(`${s.n.eventStream}#`))).toBe(true)
    expect(control.found.some((f) => f.includes(`${s.n.dlqStream}#`) && f.includes('payload'))).toBe(true)
    const scan = await scanForSecrets(s.jsm, s.n, secretsOf(s), { 'replicator logs': s.replicatorOutput })
    expect(scan.messages[s.n.eventStream]).toBeGreaterThan(100)
    expect(scan.messages[s.n.dlqStream]).toBe(forged.length * s.regions.length)
    expect(scan.found).toEqual([])
    // Nothing in the stream carries the credential headers at all, not even under another form.
    for (const name of ['authorization', 'x-auth-token', 'cookie']) {
      const headerScan = await scanForSecrets(s.jsm, s.n, [`"${name}":`])
      expect(headerScan.found.filter((f) => f.startsWith(`${s.n.eventStream}#`)), name).toEqual([])
    }
  })
})
