import {
  AckPolicy, DeliverPolicy, DiscardPolicy, JetStreamApiError, RetentionPolicy, StorageType, StoreCompression,
  type ConsumerConfig, type JetStreamManager, type StreamConfig
} from '@nats-io/jetstream'
import { TimeoutError, type NatsConnection } from '@nats-io/transport-node'
import { ErrorCode, InvalidOptionError, RegionsyncError } from './errors.js'
import type { Names } from './names.js'
import { DEFAULT_PARTITIONS, MAX_PARTITIONS } from './partitioning.js'
import { requireServerFeature } from './nats.js'
import { retryUntil } from './retry.js'

const DAY_MS = 86_400_000
export const DEFAULT_MAX_AGE_MS = 7 * DAY_MS
export const DEFAULT_DUPLICATE_WINDOW_MS = 10 * 60_000
/**
 * A record about an event (applied, a replay's answer, a resource's fence) is kept this much
 * longer than the stream keeps events, so no redelivery can outlive the record that it was handled.
 */
export const RECORD_TTL_MARGIN_MS = DAY_MS

/** How long records about events live, for a stream that keeps events `streamMaxAgeMs`. */
export function recordTtlMs (streamMaxAgeMs: number = DEFAULT_MAX_AGE_MS): number {
  return streamMaxAgeMs + RECORD_TTL_MARGIN_MS
}
/**
 * An event an owner holds is signalled as in progress every third of this, so it only runs out for
 * an owner that died or froze; then it bounds how long that owner's events count as pending
 * before the server hands them to the partition's new owner (which has applied them already).
 */
export const DEFAULT_ACK_WAIT_MS = 5000

export interface StreamSettings {
  /** Partitions of the event stream; fixed for the stream's life. @default 16 (or what the stream has) */
  partitions?: number
  /** @default 1 */
  replicas: number
  /** How long events are kept; a region behind by more than this loses events. @default 7 days */
  maxAgeMs: number
  /** Window in which JetStream drops a re-published event id. @default 10 minutes */
  duplicateWindowMs: number
  /** Compress the stream on disk (needs nats-server 2.10). @default false */
  compression: boolean
}

export function defaultStreamSettings (): StreamSettings {
  return { replicas: 1, maxAgeMs: DEFAULT_MAX_AGE_MS, duplicateWindowMs: DEFAULT_DUPLICATE_WINDOW_MS, compression: false }
}

export function parseStreamSettings (input: Partial<StreamSettings> | undefined): StreamSettings {
  const s = { ...defaultStreamSettings(), ...input }
  if (s.partitions !== undefined && (!Number.isInteger(s.partitions) || s.partitions < 1 || s.partitions > MAX_PARTITIONS)) {
    throw new InvalidOptionError('stream.partitions', `expects a whole number from 1 to ${MAX_PARTITIONS}`)
  }
  if (![1, 3, 5].includes(s.replicas)) throw new InvalidOptionError('stream.replicas', 'expects 1, 3 or 5')
  if (!Number.isInteger(s.maxAgeMs) || s.maxAgeMs < 60_000) throw new InvalidOptionError('stream.maxAgeMs', 'expects milliseconds, at least 60000')
  if (!Number.isInteger(s.duplicateWindowMs) || s.duplicateWindowMs < 1000 || s.duplicateWindowMs > s.maxAgeMs) {
    throw new InvalidOptionError('stream.duplicateWindowMs', 'expects milliseconds, from 1000 to stream.maxAgeMs')
  }
  return s
}

const DESCRIPTION_RE = /^regionsync events v1 partitions=(\d+)$/
const ms = (n: number): number => n * 1_000_000

export interface EventStreamInfo {
  partitions: number
  /**
   * Replicas the stream has, which may not be what this process asked for (whoever made it first
   * decided). The dead-letter stream and the KV buckets are opened with these, so they survive the
   * loss of a server whenever the events do.
   */
  replicas: number
}

/**
 * Creates the event stream if it is missing and verifies it if present. A running stream is never
 * changed: a mismatch that would break ordering (subjects, partitions) is an error, and the
 * partition count of an existing stream wins when none was asked for.
 */
export async function ensureEventStream (nc: NatsConnection, jsm: JetStreamManager, n: Names, settings: StreamSettings): Promise<EventStreamInfo> {
  if (settings.compression) requireServerFeature(nc, 'streamCompression', 'stream.compression')
  const partitions = settings.partitions ?? DEFAULT_PARTITIONS
  const config: Partial<StreamConfig> & { name: string } = {
    name: n.eventStream,
    description: `regionsync events v1 partitions=${partitions}`,
    subjects: [n.eventSubjects],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    discard: DiscardPolicy.Old,
    max_age: ms(settings.maxAgeMs),
    duplicate_window: ms(settings.duplicateWindowMs),
    num_replicas: settings.replicas,
    ...(settings.compression ? { compression: StoreCompression.S2 } : {})
  }
  const info = await addOrGet(jsm, config)
  const m = DESCRIPTION_RE.exec(info.config.description ?? '')
  if (m === null || !(info.config.subjects ?? []).includes(n.eventSubjects)) {
    throw new RegionsyncError(ErrorCode.StreamMismatch,
      `stream ${n.eventStream} exists but was not made by regionsync (subjects ${JSON.stringify(info.config.subjects)}); choose another namespace`)
  }
  const existing = Number(m[1])
  if (settings.partitions !== undefined && settings.partitions !== existing) {
    throw new RegionsyncError(ErrorCode.StreamMismatch,
      `stream ${n.eventStream} has ${existing} partitions, ${settings.partitions} were asked for; partitions cannot change on a running stream without breaking order`)
  }
  return { partitions: existing, replicas: info.config.num_replicas }
}

/** Partition count of an existing event stream; null when there is none yet. */
export async function eventStreamPartitions (jsm: JetStreamManager, n: Names): Promise<number | null> {
  try {
    const info = await jsm.streams.info(n.eventStream)
    const m = DESCRIPTION_RE.exec(info.config.description ?? '')
    return m === null ? null : Number(m[1])
  } catch (err) {
    if (isNotFound(err)) return null
    throw err
  }
}

/** The dead-letter stream keeps letters until an operator replays or purges them. */
export async function ensureDlqStream (jsm: JetStreamManager, n: Names, replicas: number): Promise<void> {
  await addOrGet(jsm, {
    name: n.dlqStream,
    description: 'regionsync dead letters v1',
    subjects: [n.dlqSubjects],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    num_replicas: replicas
  })
}

/** Attempts at making or finding a stream or consumer whose requests time out. */
const CREATE_ATTEMPTS = 3

/**
 * Processes starting at once all make the same streams and consumers. On a clustered 2.9 server,
 * while another's add is still being set up, both our look and our add may get no answer at all
 * (measured with three servers and four replicators): asked again, it is there.
 */
export async function retryTimeouts<T> (fn: () => Promise<T>): Promise<T> {
  return await retryUntil(fn, { retryable: (err, attempt) => err instanceof TimeoutError && attempt < CREATE_ATTEMPTS })
}

async function addOrGet (jsm: JetStreamManager, config: Partial<StreamConfig> & { name: string }) {
  return await retryTimeouts(async () => await addOrGetOnce(jsm, config))
}

async function addOrGetOnce (jsm: JetStreamManager, config: Partial<StreamConfig> & { name: string }) {
  const name = config.name
  try {
    return await jsm.streams.info(name)
  } catch (err) {
    if (!isNotFound(err)) throw err
  }
  try {
    return await jsm.streams.add(config)
  } catch (err) {
    // Another process created it between our look and our add.
    if (err instanceof JetStreamApiError && err.code === 10058) return await jsm.streams.info(name)
    throw err
  }
}

export function isNotFound (err: unknown): boolean {
  return err instanceof JetStreamApiError && (err.status === 404 || err.code === 10059 || err.code === 10014)
}

/** Where a region's consumers start when they are first created. */
export type StartFrom = { kind: 'first' } | { kind: 'new' } | { kind: 'seq', seq: number } | { kind: 'time', time: Date }

export function parseStartFrom (value: string, option = '--from'): StartFrom {
  if (value === 'first') return { kind: 'first' }
  if (value === 'new') return { kind: 'new' }
  const seq = /^seq:(\d+)$/.exec(value)
  if (seq !== null && Number(seq[1]) >= 1) return { kind: 'seq', seq: Number(seq[1]) }
  const time = /^time:(.+)$/.exec(value)
  if (time !== null && !Number.isNaN(Date.parse(time[1] as string))) return { kind: 'time', time: new Date(time[1] as string) }
  throw new InvalidOptionError(option, 'expects first, new, seq:N (N >= 1) or time:ISO-8601 (e.g. time:2026-01-31T12:00:00Z)')
}

export interface PartitionConsumerSettings {
  region: string
  partition: number
  from: StartFrom
  ackWaitMs: number
  /** Events the owner keeps in flight; the consumer allows twice that (see below). */
  window: number
}

/**
 * One durable pull consumer per region and partition, shared by every instance of the region: the
 * durable queue group. One instance owns a partition at a time (ownership.ts) and keeps up to its
 * window in flight. The consumer allows twice the window unacknowledged, so a new owner can start
 * while a dead owner's events still wait out their ack wait.
 */
export interface PartitionConsumer {
  name: string
  /** The consumer's own ack wait, which may differ from what this process would have created it with. */
  ackWaitMs: number
}

export async function ensurePartitionConsumer (jsm: JetStreamManager, n: Names, s: PartitionConsumerSettings): Promise<PartitionConsumer> {
  return await retryTimeouts(async () => await ensurePartitionConsumerOnce(jsm, n, s))
}

async function ensurePartitionConsumerOnce (jsm: JetStreamManager, n: Names, s: PartitionConsumerSettings): Promise<PartitionConsumer> {
  const name = n.consumer(s.region, s.partition)
  const filter = n.partitionFilter(s.partition)
  let info
  try {
    info = await jsm.consumers.info(n.eventStream, name)
  } catch (err) {
    if (!isNotFound(err)) throw err
  }
  if (info === undefined) {
    const config: Partial<ConsumerConfig> = {
      durable_name: name,
      description: `regionsync region=${s.region} partition=${s.partition}`,
      filter_subject: filter,
      ack_policy: AckPolicy.Explicit,
      ack_wait: ms(s.ackWaitMs),
      max_ack_pending: maxAckPendingFor(s.window),
      max_deliver: -1,
      ...deliverPolicy(s.from)
    }
    try {
      info = await jsm.consumers.add(n.eventStream, config)
    } catch (err) {
      // Another instance of the region created it first, possibly with another start point: theirs
      // wins. Any other refusal leaves no consumer behind, and is the error to report.
      if (!(err instanceof JetStreamApiError)) throw err
      info = await jsm.consumers.info(n.eventStream, name).catch((infoErr: unknown) => { throw isNotFound(infoErr) ? err : infoErr })
    }
  }
  if (info.config.filter_subject !== filter || info.config.ack_policy !== AckPolicy.Explicit) {
    throw new RegionsyncError(ErrorCode.StreamMismatch, `consumer ${name} exists with another filter or ack settings; delete it to let regionsync recreate it`)
  }
  if ((info.config.max_ack_pending ?? 0) < maxAckPendingFor(s.window)) {
    // Made by an older regionsync (one event at a time) or for a smaller window: widen it. The ack
    // wait moves to this process's with it, since the old default held a dead owner's events 30 s.
    info = await jsm.consumers.update(n.eventStream, name, { max_ack_pending: maxAckPendingFor(s.window), ack_wait: ms(s.ackWaitMs) })
  }
  return { name, ackWaitMs: Math.round((info.config.ack_wait ?? ms(s.ackWaitMs)) / 1_000_000) }
}

function maxAckPendingFor (window: number): number {
  return Math.max(2 * window, 64)
}

function deliverPolicy (from: StartFrom): Partial<ConsumerConfig> {
  switch (from.kind) {
    case 'first': return { deliver_policy: DeliverPolicy.All }
    case 'new': return { deliver_policy: DeliverPolicy.New }
    case 'seq': return { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: from.seq }
    case 'time': return { deliver_policy: DeliverPolicy.StartTime, opt_start_time: from.time.toISOString() }
  }
}

