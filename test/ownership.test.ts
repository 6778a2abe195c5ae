import { describe, expect, it } from 'vitest'
import type { Replicator } from '@regionsync/replicator'
import { EventPublisher, newEvent } from './helpers/events.js'
import { SIGNING_KEY, startReplicator, uniqueNamespace, waitFor } from './helpers/fixtures.js'
import { useNats } from './helpers/harness.js'
import { TestTarget } from './helpers/target.js'

const h = useNats()

async function instance (ns: string, url: string, name: string): Promise<Replicator> {
  const r = await startReplicator(await h.connection(), { region: 'eu', namespace: ns, target: url, instance: name })
  h.defer(async () => await r.close())
  return r
}

describe('partition ownership', () => {
  it('the instances of a region share the partitions evenly, and one that stops hands its share to the others at once', async () => {
    const ns = uniqueNamespace()
    const t = await TestTarget.start()
    h.defer(async () => await t.close())
    const a = await instance(ns, t.url, 'a')
    await waitFor('one instance to own every partition', () => a.owned.length === a.partitions)
    const b = await instance(ns, t.url, 'b')
    const c = await instance(ns, t.url, 'c')
    await waitFor('three instances to split 16 partitions 6/5/5', () => {
      const counts = [a, b, c].map((r) => r.owned.length).sort()
      return counts.join() === '5,5,6' && new Set([...a.owned, ...b.owned, ...c.owned]).size === 16
    }, 15_000)

    // Events keep flowing while the third leaves: nothing is lost, every key stays in order.
    const pub = new EventPublisher(await h.connection(), ns, a.partitions, SIGNING_KEY)
    const events = Array.from({ length: 300 }, (_, i) => newEvent({ resource: `users/${i % 30}`, path: `/v3/users/${i % 30}`, method: 'PATCH', body: JSON.stringify({ n: i }) }))
    const publishing = (async () => { for (const e of events) await pub.publish(e) })()
    const leftAt = Date.now()
    await c.close()
    await waitFor('the two left to own all 16', () => a.owned.length + b.owned.length === 16 && new Set([...a.owned, ...b.owned]).size === 16, 10_000)
    const handOverMs = Date.now() - leftAt
    await publishing
    await waitFor('every event at the target', () => new Set(t.requests.map((r) => r.headers['idempotency-key'])).size === events.length, 30_000)

    // A graceful leave is handed over within a renewal round or two, not a lease's lifetime.
    expect(handOverMs).toBeLessThan(5000)
    for (let k = 0; k < 30; k++) {
      const seen = t.requests.filter((r) => r.path === `/v3/users/${k}`).map((r) => JSON.parse(r.body.toString()).n as number)
      const firsts = seen.filter((n, i) => seen.indexOf(n) === i)
      expect(firsts, `order of users/${k}`).toEqual([...firsts].sort((x, y) => x - y))
    }
  })
})
