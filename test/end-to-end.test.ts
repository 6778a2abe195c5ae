import { jetstream, jetstreamManager } from '@nats-io/jetstream'
import { Kvm } from '@nats-io/kv'
import { Replicator } from '@regionsync/replicator'
import { EVENT_SIGNATURE_HEADER, decodeEvent, names } from '@regionsync/shared'
import { headers as natsHeaders } from '@nats-io/transport-node'
import { describe, expect, it } from 'vitest'
import { registryValue } from './helpers/events.js'
import { SIGNING_KEY, call, silentLogger, startIdentityApi, state, uniqueNamespace, waitFor, type RunningApi } from './helpers/fixtures.js'
import { useNats } from './helpers/harness.js'
import { streamMessages } from './helpers/stream.js'

const h = useNats()


const connection = h.connection

async function api (region: string, namespace: string, token?: string): Promise<RunningApi> {
  const running = await startIdentityApi({ region, namespace, nc: await connection(), ...(token !== undefined ? { token } : {}) })
  h.defer(async () => await running.app.close())
  return running
}

async function replicator (region: string, target: string, namespace: string, token?: string): Promise<Replicator> {
  const r = await Replicator.start({
    region, target, signingKey: SIGNING_KEY, connection: await connection(), logger: silentLogger, namespace,
    ...(token !== undefined ? { targetToken: token } : {})
  })
  h.defer(async () => await r.close())
  return r
}

describe('end to end', () => {
  it('two regions with two replicator instances each end with the source\'s data', async () => {
    const ns = uniqueNamespace()
    const source = await api('us', ns)
    const eu = await api('eu', ns, 'eu-secret')
    const ap = await api('ap', ns, 'ap-secret')
    const replicators = [
      await replicator('eu', eu.url, ns, 'eu-secret'), await replicator('eu', eu.url, ns, 'eu-secret'),
      await replicator('ap', ap.url, ns, 'ap-secret'), await replicator('ap', ap.url, ns, 'ap-secret')
    ]

    const ids: string[] = []
    for (let i = 0; i < 40; i++) {
      const res = await call(source.url, 'POST', '/v3/users', { user: { name: `user${i}`, password: `pw${i}` } })
      expect(res.status).toBe(201)
      ids.push(res.body.user.id)
    }
    const project = await call(source.url, 'POST', '/v3/projects', { project: { name: 'ops' } })
    for (const [i, id] of ids.entries()) {
      if (i % 3 === 0) expect((await call(source.url, 'DELETE', `/v3/users/${id}`)).status).toBe(204)
      else expect((await call(source.url, 'PATCH', `/v3/users/${id}`, { user: { email: `u${i}@example.org` } })).status).toBe(200)
      if (i % 3 === 1) expect((await call(source.url, 'PUT', `/v3/projects/${project.body.project.id as string}/users/${id}/roles/admin`)).status).toBe(204)
    }

    const expected = await state(source.url)
    expect(expected.users).toHaveLength(26)
    expect(expected.grants.length).toBeGreaterThan(0)
    for (const region of [eu, ap]) {
      await waitFor('region to match the source', async () => JSON.stringify(await state(region.url)) === JSON.stringify(expected))
    }
    for (const r of replicators) await waitFor('lag to drain', async () => (await r.lag()).pending === 0)
    const applied = (await Promise.all(replicators.map(async (r) => (await r.status()).applied)))
    // Every event reached each region once: 40 creates, 1 project, 40 updates/deletes, 13 grants.
    expect(applied[0]! + applied[1]!).toBe(94)
    expect(applied[2]! + applied[3]!).toBe(94)
  })

  it('a create and a DELETE the target\'s guard recorded are known applied from the entity\'s record: copies stored again are not sent', async () => {
    const ns = uniqueNamespace()
    const source = await api('us', ns)
    const eu = await api('eu', ns, 'eu-secret')
    const first = await replicator('eu', eu.url, ns, 'eu-secret')
    const kept = await call(source.url, 'POST', '/v3/users', { user: { name: 'kept' } })
    const gone = await call(source.url, 'POST', '/v3/users', { user: { name: 'gone' } })
    expect((await call(source.url, 'DELETE', `/v3/users/${gone.body.user.id as string}`)).status).toBe(204)
    await waitFor('eu to match the source', async () => JSON.stringify(await state(eu.url)) === JSON.stringify(await state(source.url)))
    await waitFor('lag to drain', async () => (await first.lag()).pending === 0)
    await first.close()
    const received = async (outcome: string): Promise<number> => await registryValue(eu.app.regionsync.registry, 'regionsync_replays_received_total', { region: 'eu', outcome })
    expect(await received('applied')).toBe(3)

    // The region's applied log has none of the three: their entities' records name them.
    const n = names(ns)
    const nc = await connection()
    const events = (await streamMessages(await jetstreamManager(nc), n.eventStream)).map((m) => ({ m, event: decodeEvent(m.data) }))
    expect(events.map((e) => e.event.method)).toEqual(['POST', 'POST', 'DELETE'])
    const applied = await new Kvm(nc).open(n.appliedBucket)
    expect((await applied.status()).values).toBe(0)

    // Each event stored again, as a publisher's retry past the duplicate window would: a new
    // instance, which remembers nothing itself, finds them applied and sends none.
    const js = jetstream(nc)
    for (const { m } of events) {
      const h = natsHeaders()
      h.set(EVENT_SIGNATURE_HEADER, m.header?.get(EVENT_SIGNATURE_HEADER) ?? '')
      expect((await js.publish(m.subject, m.data, { msgID: `${m.seq}-copy`, headers: h })).duplicate).toBe(false)
    }
    const second = await replicator('eu', eu.url, ns, 'eu-secret')
    await waitFor('the copies to be acknowledged', async () => (await second.lag()).pending === 0)
    expect(await registryValue(second.metrics.registry, 'regionsync_events_skipped_total', { region: 'eu', reason: 'already-applied' })).toBe(3)
    expect(await received('applied') + await received('duplicate')).toBe(3)
    expect(await state(eu.url)).toEqual(await state(source.url))
    expect((await applied.status()).values).toBe(0)
  })
})
