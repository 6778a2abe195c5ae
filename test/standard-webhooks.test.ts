import { execFileSync, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { regionsync } from '@regionsync/publisher'
import type { Replicator } from '@regionsync/replicator'
import { IDEMPOTENCY_KEY_HEADER, createSigner, parseTraceparent, webhookSecret } from '@regionsync/shared'
import Fastify, { type FastifyInstance } from 'fastify'
import { Webhook } from 'standardwebhooks'
import { describe, expect, it } from 'vitest'
import { call, silentLogger, startReplicator, uniqueNamespace, waitFor } from './helpers/fixtures.js'
import { useNats } from './helpers/harness.js'

const h = useNats()

const hasOpenssl = spawnSync('openssl', ['version']).status === 0
const OLD_KEY = randomBytes(32).toString('hex')
const NEW_KEY = randomBytes(32).toString('hex')

/** The source region's API: notes, with our plugin. */
async function sourceApi (ns: string, signingKey: string | string[]): Promise<string> {
  const app = Fastify({ logger: false })
  const spoolDir = await mkdtemp(join(tmpdir(), 'regionsync-spool-'))
  h.defer(async () => await rm(spoolDir, { recursive: true, force: true }))
  h.defer(async () => await app.close())
  await app.register(regionsync, { region: 'us', connection: await h.connection(), signingKey, namespace: ns, spool: { dir: spoolDir } })
  app.put('/notes/:id', async (request) => ({ id: (request.params as { id: string }).id, ...(request.body as object) }))
  return await app.listen({ port: 0, host: '127.0.0.1' })
}

interface PlainTarget {
  url: string
  /** Notes as applied, once each. */
  notes: Map<string, unknown>
  /** Every delivery, verified or not. */
  deliveries: Array<{ id: string | undefined, idempotencyKey: string | undefined, verified: boolean, traceparent: string | undefined }>
  /** Secrets the target verifies with (its team swaps them as the source rotates). */
  secrets: string[]
  /** Notes whose first delivery is applied, then answered 503 (as if the answer were lost). */
  loseFirstAnswerFor: Set<string>
}

/**
 * Another team's service: plain Fastify, no regionsync plugin. It checks each replay with the
 * `standardwebhooks` library, and applies each webhook-id once.
 */
async function plainTarget (secrets: string[]): Promise<PlainTarget> {
  const app = Fastify({ logger: false })
  h.defer(async () => await app.close())
  // The signature covers the bytes as sent: keep them, parse after verifying.
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (_req, body, done) => { done(null, body) })
  const t: PlainTarget = { url: '', notes: new Map(), deliveries: [], secrets, loseFirstAnswerFor: new Set() }
  const answered = new Map<string, unknown>()
  app.put('/notes/:id', async (request, reply) => {
    const id = request.headers['webhook-id'] as string | undefined
    let payload: unknown
    const verified = t.secrets.some((secret) => {
      try {
        payload = new Webhook(secret).verify(request.body as Buffer, request.headers as Record<string, string>)
        return true
      } catch {
        return false
      }
    })
    t.deliveries.push({ id, idempotencyKey: request.headers[IDEMPOTENCY_KEY_HEADER] as string | undefined, verified, traceparent: request.headers.traceparent as string | undefined })
    if (!verified || id === undefined) return await reply.code(401).send({ error: 'bad webhook signature' })
    if (answered.has(id)) return answered.get(id)
    const note = (request.params as { id: string }).id
    t.notes.set(note, payload)
    answered.set(id, payload)
    if (t.loseFirstAnswerFor.delete(note)) return await reply.code(503).send({ error: 'answer lost' })
    return payload
  })
  t.url = await app.listen({ port: 0, host: '127.0.0.1' })
  return t
}

async function replicator (ns: string, target: string, signingKey: string | string[]): Promise<Replicator> {
  const r = await startReplicator(await h.connection(), { region: 'eu', namespace: ns, target, signingKey, logger: silentLogger })
  h.defer(async () => await r.close())
  return r
}

describe('Standard Webhooks', () => {
  it('a target without the plugin verifies real replays with the standardwebhooks library and applies a redelivery once', async () => {
    const ns = uniqueNamespace()
    const source = await sourceApi(ns, NEW_KEY)
    const target = await plainTarget([webhookSecret(NEW_KEY)])
    const r = await replicator(ns, target.url, NEW_KEY)
    const traceparent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'

    expect((await call(source, 'PUT', '/notes/a', { text: 'first' }, { traceparent })).status).toBe(200)
    await waitFor('note a', () => target.notes.has('a'))
    // The next write's first answer is lost after the target applied it: the replicator sends it
    // again with the same webhook-id, and the target answers from what it kept.
    target.loseFirstAnswerFor.add('b')
    expect((await call(source, 'PUT', '/notes/b', { text: 'second' })).status).toBe(200)
    await waitFor('b applied and the region caught up', async () => target.notes.has('b') && (await r.lag()).pending === 0)

    expect(target.notes.get('a')).toEqual({ text: 'first' })
    expect(target.notes.get('b')).toEqual({ text: 'second' })
    const ofB = target.deliveries.filter((d) => d.id === target.deliveries.at(-1)?.id)
    expect(ofB).toHaveLength(2)
    expect(target.deliveries.every((d) => d.verified)).toBe(true)
    // The draft's Idempotency-Key and Standard Webhooks' webhook-id name the same delivery.
    expect(target.deliveries.every((d) => d.idempotencyKey === d.id)).toBe(true)
    expect((await r.status()).applied).toBe(2)
    // The replay is a child of the source request's trace: same trace, its own span.
    const sent = parseTraceparent(target.deliveries[0]?.traceparent)
    expect(sent?.traceId).toBe('0af7651916cd43dd8448eb211c80319c')
    expect(sent?.spanId).not.toBe('b7ad6b7169203331')
    expect(target.deliveries[1]?.traceparent).toBeUndefined()
  })

  it.skipIf(!hasOpenssl)('the derived secret is what the README\'s openssl line gives, and is not the signing key', () => {
    const line = 'echo "whsec_$(printf %s regionsync-standard-webhooks-v1 | openssl dgst -sha256 -hmac "$REGIONSYNC_SIGNING_KEY" -binary | base64)"'
    const viaOpenssl = execFileSync('bash', ['-c', line], { env: { ...process.env, REGIONSYNC_SIGNING_KEY: OLD_KEY }, encoding: 'utf8' }).trim()
    expect(webhookSecret(OLD_KEY)).toBe(viaOpenssl)
    expect(viaOpenssl).toMatch(/^whsec_[A-Za-z0-9+/]{43}=$/)
    expect(viaOpenssl.slice(6)).not.toBe(Buffer.from(OLD_KEY).toString('base64'))
    // Handing a target the secret does not hand it the key: events signed with it are refused.
    const payload = Buffer.from('{"v":1}')
    expect(() => createSigner(OLD_KEY).verifyEvent(payload, createSigner(viaOpenssl).signEvent(payload))).toThrow()
    expect(() => webhookSecret(`${OLD_KEY},${NEW_KEY}`)).toThrow(/one key/)
  })
})

describe('signing key rotation', () => {
  it('events flow throughout: add the new key second everywhere, make it first, drop the old one', async () => {
    const ns = uniqueNamespace()
    // The target's team holds both secrets while the keys change, and only the new one after.
    const target = await plainTarget([webhookSecret(OLD_KEY)])
    let n = 0
    const write = async (source: string): Promise<string> => {
      const id = `n${++n}`
      expect((await call(source, 'PUT', `/notes/${id}`, { n })).status).toBe(200)
      return id
    }
    const arrived = async (ids: string[]): Promise<void> => { await waitFor(`notes ${ids.join(', ')}`, () => ids.every((id) => target.notes.has(id))) }

    // Before: one key.
    const sourceOld = await sourceApi(ns, OLD_KEY)
    const replicatorOld = await replicator(ns, target.url, OLD_KEY)
    await arrived([await write(sourceOld)])

    // 1. The new key is added second everywhere (a rolling restart: old and new instances run
    //    side by side); nothing changes on the wire yet.
    const sourceBoth = await sourceApi(ns, [OLD_KEY, NEW_KEY])
    const replicatorBoth = await replicator(ns, target.url, [OLD_KEY, NEW_KEY])
    await arrived([await write(sourceOld), await write(sourceBoth)])
    await replicatorOld.close()

    // 2. Only once every instance has both: the publishers sign with the new key first, the
    //    replicators may still sign with the old. Events signed with either are applied, and
    //    every replay carries one webhook signature per key, so the target may take the new secret.
    target.secrets.push(webhookSecret(NEW_KEY))
    const sourceNewFirst = await sourceApi(ns, `${NEW_KEY},${OLD_KEY}`)
    await arrived([await write(sourceNewFirst), await write(sourceBoth), await write(sourceNewFirst), await write(sourceOld)])

    // 3. The old key is dropped everywhere, and from the target, once no publisher signs with it.
    target.secrets.splice(0, 1)
    const replicatorNew = await replicator(ns, target.url, NEW_KEY)
    await replicatorBoth.close()
    const sourceNew = await sourceApi(ns, NEW_KEY)
    await arrived([await write(sourceNew), await write(sourceNewFirst)])

    expect(replicatorBoth.counts.deadLetters + replicatorOld.counts.deadLetters + replicatorNew.counts.deadLetters).toBe(0)
    expect(target.notes.size).toBe(n)
    expect(target.deliveries.filter((d) => !d.verified)).toEqual([])
  })

  it('signs with the first key, verifies with any, and signs webhooks with each', () => {
    const rotating = createSigner([NEW_KEY, OLD_KEY])
    const old = createSigner(OLD_KEY)
    const fresh = createSigner(NEW_KEY)
    const payload = Buffer.from('{"v":1}')
    expect(rotating.signEvent(payload)).toBe(fresh.signEvent(payload))
    expect(() => rotating.verifyEvent(payload, old.signEvent(payload))).not.toThrow()
    expect(() => rotating.verifyEvent(payload, fresh.signEvent(payload))).not.toThrow()
    expect(() => old.verifyEvent(payload, rotating.signEvent(payload))).toThrow()
    const replay = { eventId: 'e-1', origin: 'us', method: 'PUT', body: payload, seq: 7, resource: '/notes/a' }
    expect(rotating.verifyReplay(replay, old.signReplay(replay))).toBe(true)
    expect(old.verifyReplay(replay, rotating.signReplay(replay))).toBe(false)
    expect(fresh.verifyReplay(replay, rotating.signReplay(replay))).toBe(true)

    const ts = Math.floor(Date.now() / 1000)
    const headers = { 'webhook-id': 'e-1', 'webhook-timestamp': String(ts), 'webhook-signature': rotating.signWebhook('e-1', ts, payload) }
    expect(headers['webhook-signature'].split(' ')).toHaveLength(2)
    for (const key of [OLD_KEY, NEW_KEY]) expect(new Webhook(webhookSecret(key)).verify(payload, headers)).toEqual({ v: 1 })
    expect(() => new Webhook(webhookSecret(randomBytes(32).toString('hex'))).verify(payload, headers)).toThrow()
    expect(() => createSigner([OLD_KEY, OLD_KEY])).toThrow(/lists the same key twice/)
    expect(() => createSigner(`${OLD_KEY},short`)).toThrow(/at least 32 characters/)
  })
})
