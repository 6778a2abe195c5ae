import { AckPolicy, DeliverPolicy, type JetStreamManager } from '@nats-io/jetstream'
import type { Names } from './names.js'
import { parseConsumerName } from './partitioning.js'
import { nextBySubject } from './stream-read.js'
import { isNotFound } from './stream-setup.js'

export interface RegionLag {
  region: string
  /** Events not yet applied: waiting plus delivered but not yet acknowledged, over all partitions. */
  pending: number
  /** Age of the oldest event not yet applied, from its own commit time; 0 when caught up. */
  lagSeconds: number
  /** Commit time of the oldest event not yet applied, null when caught up. */
  oldestPendingAt: Date | null
  /** Partition consumers that exist for the region. */
  consumers: number
}

/**
 * Exact lag of one region, read from JetStream's own consumer state (I7), so it is right even
 * when no replicator of the region runs. Per partition, the oldest unapplied event is the first
 * message on the partition's subject after the consumer's ack floor: everything up to the floor is
 * acknowledged, and the first message past it is not (or the floor would have moved past it).
 *
 * The region's own writes are on its partitions' subjects too (`<ns>.ev.<p>.<region>`): its
 * replicator acknowledges them without a replay, but while none runs they sit past the floor.
 * They are never the region's pending: they are counted apart and left out of pending and lag.
 */
export async function regionLag (jsm: JetStreamManager, n: Names, region: string, partitions: number, now = new Date()): Promise<RegionLag> {
  let pending = 0
  let consumers = 0
  let oldest: Date | null = null
  await Promise.all(Array.from({ length: partitions }, async (_, p) => {
    let info
    try {
      info = await jsm.consumers.info(n.eventStream, n.consumer(region, p))
    } catch (err) {
      if (isNotFound(err)) return
      throw err
    }
    consumers++
    const waiting = info.num_pending + info.num_ack_pending
    if (waiting === 0) return
    const from = info.ack_floor.stream_seq + 1
    const origins = await originsOf(jsm, n, p)
    const own = n.eventSubject(p, region)
    if (!origins.includes(own)) {
      pending += waiting
      const at = await oldestAfter(jsm, n, n.partitionFilter(p), from)
      if (at !== null && (oldest === null || at < oldest)) oldest = at
      return
    }
    const others = waiting - await countAfter(jsm, n, own, from)
    if (others <= 0) return
    pending += others
    for (const subject of origins) {
      if (subject === own) continue
      const at = await oldestAfter(jsm, n, subject, from)
      if (at !== null && (oldest === null || at < oldest)) oldest = at
    }
  }))
  const found = oldest as Date | null
  return {
    region,
    pending,
    oldestPendingAt: found,
    lagSeconds: found === null ? 0 : Math.max(0, (now.getTime() - found.getTime()) / 1000),
    consumers
  }
}

/** The subjects (one per origin region) the partition holds messages on. */
async function originsOf (jsm: JetStreamManager, n: Names, partition: number): Promise<string[]> {
  const info = await jsm.streams.info(n.eventStream, { subjects_filter: n.partitionFilter(partition) })
  return Object.keys(info.state.subjects ?? {})
}

/**
 * Messages on `subject` from `seq` on, as JetStream counts them: the pending count of a
 * short-lived consumer that starts there (2.9 included), deleted at once.
 */
async function countAfter (jsm: JetStreamManager, n: Names, subject: string, seq: number): Promise<number> {
  // The usual case, a running replicator having acknowledged its region's own writes: the last of
  // them is behind the floor, and one get says so without a probe consumer.
  let last
  try {
    last = await jsm.streams.getMessage(n.eventStream, { last_by_subj: subject })
  } catch (err) {
    if (isNotFound(err)) return 0
    throw err
  }
  if (last === null || last.seq < seq) return 0
  const probe = await jsm.consumers.add(n.eventStream, {
    filter_subject: subject,
    deliver_policy: DeliverPolicy.StartSequence,
    opt_start_seq: seq,
    ack_policy: AckPolicy.None,
    inactive_threshold: 10_000_000_000
  })
  try {
    return probe.num_pending
  } finally {
    await jsm.consumers.delete(n.eventStream, probe.name).catch(() => false)
  }
}

async function oldestAfter (jsm: JetStreamManager, n: Names, subject: string, seq: number): Promise<Date | null> {
  const msg = await nextBySubject(jsm, n.eventStream, subject, seq)
  if (msg === null) return null
  try {
    const committedAt = (msg.json<{ committedAt?: unknown }>()).committedAt
    if (typeof committedAt === 'string') {
      const d = new Date(committedAt)
      if (!Number.isNaN(d.getTime())) return d
    }
  } catch {
    // A malformed event still has an age: the time the stream stored it.
  }
  return new Date(msg.time)
}

/** Regions that have consumers on the event stream, found from the consumers' names. */
export async function listRegions (jsm: JetStreamManager, n: Names): Promise<string[]> {
  const regions = new Set<string>()
  try {
    for await (const c of jsm.consumers.list(n.eventStream)) {
      const parsed = parseConsumerName(n.namespace, c.name)
      if (parsed !== null) regions.add(parsed.region)
    }
  } catch (err) {
    if (isNotFound(err)) return []
    throw err
  }
  return [...regions].sort()
}
