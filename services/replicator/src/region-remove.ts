import type { JetStreamManager } from '@nats-io/jetstream'
import { eventStreamPartitions, isNotFound, verifyBucket, type Names } from '@regionsync/shared'

/** What `regionsync region remove` took away. */
export interface RegionRemoval {
  region: string
  consumers: number
  /** KV records (applied ids, leases and instances, entity ids, id types, the verify summary) and dead letters. */
  records: number
}

/**
 * Removes one region from a namespace: its partition consumers (so its pending and lag stop
 * showing), and its records in every shared bucket (keys `<region>.…`) and its dead letters. The
 * events stay: other regions still need them. A replicator started for the region again begins
 * as a new region (its `--from`).
 */
export async function removeRegion (jsm: JetStreamManager, n: Names, region: string): Promise<RegionRemoval> {
  const partitions = await eventStreamPartitions(jsm, n) ?? 0
  let consumers = 0
  for (let p = 0; p < partitions; p++) {
    try {
      if (await jsm.consumers.delete(n.eventStream, n.consumer(region, p))) consumers++
    } catch (err) {
      if (!isNotFound(err)) throw err
    }
  }
  let records = 0
  const purge = async (stream: string, filter: string): Promise<void> => {
    try {
      records += (await jsm.streams.purge(stream, { filter })).purged
    } catch (err) {
      if (!isNotFound(err)) throw err
    }
  }
  for (const bucket of [n.appliedBucket, n.ownersBucket, n.entityBucket, n.idTypesBucket]) await purge(`KV_${bucket}`, `$KV.${bucket}.${region}.>`)
  const verify = verifyBucket(n)
  await purge(`KV_${verify}`, `$KV.${verify}.${region}`)
  await purge(n.dlqStream, n.dlqSubject(region))
  return { region, consumers, records }
}
