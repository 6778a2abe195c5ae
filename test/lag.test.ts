import { jetstreamManager } from '@nats-io/jetstream'
import { names, regionLag } from '@regionsync/shared'
import { Replicator } from '@regionsync/replicator'
import { expect, it } from 'vitest'
import { EventPublisher, newEvent } from './helpers/events.js'
import { SIGNING_KEY, silentLogger, uniqueNamespace } from './helpers/fixtures.js'
import { useNats } from './helpers/harness.js'

const h = useNats()

it('a region\'s own writes never count as its pending or its lag, with no replicator of it running', async () => {
  const ns = uniqueNamespace()
  const nc = await h.connection()
  // The region ran a replicator once (its consumers exist), then stopped.
  const r = await Replicator.start({ region: 'eu', target: 'http://127.0.0.1:9', signingKey: SIGNING_KEY, connection: nc, logger: silentLogger, namespace: ns })
  const partitions = r.partitions
  await r.close()
  const pub = new EventPublisher(nc, ns, partitions, SIGNING_KEY)
  const jsm = await jetstreamManager(nc)

  // Its own API keeps writing: nothing for eu to apply.
  for (let i = 0; i < 5; i++) await pub.publish(newEvent({ origin: 'eu', resource: `users/eu-${i}`, committedAt: new Date(Date.now() - 60_000) }))
  expect(await regionLag(jsm, names(ns), 'eu', partitions)).toMatchObject({ pending: 0, lagSeconds: 0, oldestPendingAt: null })

  // A write from us, on a partition that also holds eu's own: exactly one pending, aged from it.
  const fromUs = newEvent({ origin: 'us', resource: 'users/eu-0', committedAt: new Date(Date.now() - 5_000) })
  await pub.publish(fromUs)
  const lag = await regionLag(jsm, names(ns), 'eu', partitions)
  expect(lag.pending).toBe(1)
  expect(lag.lagSeconds).toBeGreaterThanOrEqual(5)
  expect(lag.lagSeconds).toBeLessThan(30)
})
