import type { JetStreamManager } from '@nats-io/jetstream'
import { isNotFound, nextBySubject, regionLag, type Names } from '@regionsync/shared'

/** How often a recheck asks JetStream whether a region has caught up. */
const CATCH_UP_POLL_MS = 200

/** A region's replication position when verify began, as the report shows it. */
export interface RegionPosition {
  region: string
  /** Last sequence of the event stream when verify began. */
  streamSeq: number
  /** Events not yet applied in the region then. */
  pending: number
  lagSeconds: number
  /** Partition consumers the region has; 0 when no replicator ever ran for it. */
  consumers: number
}

/** The stream's last sequence and each region's lag, read from JetStream's own state (I7). */
export async function startPositions (jsm: JetStreamManager, n: Names, regions: string[], partitions: number): Promise<RegionPosition[]> {
  const streamSeq = await lastStreamSeq(jsm, n)
  return await Promise.all(regions.map(async (region): Promise<RegionPosition> => {
    const lag = await regionLag(jsm, n, region, partitions)
    return { region, streamSeq, pending: lag.pending, lagSeconds: lag.lagSeconds, consumers: lag.consumers }
  }))
}

export async function lastStreamSeq (jsm: JetStreamManager, n: Names): Promise<number> {
  try {
    return (await jsm.streams.info(n.eventStream)).state.last_seq
  } catch (err) {
    if (isNotFound(err)) return 0
    throw err
  }
}

/**
 * Waits until the region has applied every event of one partition up to stream sequence `seq`:
 * no event on the partition's subjects lies between the consumer's ack floor and `seq`. True when
 * it has; false when `timeoutMs` passed first, or when the region has no consumer for the
 * partition (nothing will ever apply its events, so there is nothing to wait for).
 */
export async function waitApplied (jsm: JetStreamManager, n: Names, region: string, partition: number, seq: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    let info
    try {
      info = await jsm.consumers.info(n.eventStream, n.consumer(region, partition))
    } catch (err) {
      if (isNotFound(err)) return false
      throw err
    }
    if (info.num_pending + info.num_ack_pending === 0) return true
    const next = await nextOnPartition(jsm, n, partition, info.ack_floor.stream_seq + 1)
    if (next === null || next > seq) return true
    if (Date.now() >= deadline) return false
    await new Promise((resolve) => setTimeout(resolve, CATCH_UP_POLL_MS))
  }
}

/** Sequence of the first event on a partition at or after `seq`, or null. */
async function nextOnPartition (jsm: JetStreamManager, n: Names, partition: number, seq: number): Promise<number | null> {
  return (await nextBySubject(jsm, n.eventStream, n.partitionFilter(partition), seq))?.seq ?? null
}

/** Sequence of the last message on one exact subject, 0 when it has none. */
export async function lastSubjectSeq (jsm: JetStreamManager, n: Names, subject: string): Promise<number> {
  try {
    const msg = await jsm.streams.getMessage(n.eventStream, { last_by_subj: subject })
    return msg === null ? 0 : msg.seq
  } catch (err) {
    if (isNotFound(err)) return 0
    throw err
  }
}
