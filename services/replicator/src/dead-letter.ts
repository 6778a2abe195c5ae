import type { JetStreamClient, JetStreamManager } from '@nats-io/jetstream'
import { isNotFound, partitionOfSubject, walkSubject, type Names } from '@regionsync/shared'

/**
 * `unmapped-id`: the path names an entity whose id the target replaced, and the region has no record
 * of the target's id for it (never sent). `delete-not-found`: a DELETE answered 404 for an entity
 * the region created and never deleted (the DELETE missed it; it survives in the region).
 */
export const DEAD_LETTER_REASONS = ['malformed', 'bad-signature', 'bad-path', 'undecryptable', 'rejected', 'too-many-attempts', 'unmapped-id', 'delete-not-found'] as const
export type DeadLetterReason = (typeof DEAD_LETTER_REASONS)[number]

/** One event a region could not apply, with what an operator needs to act on it. */
export interface DeadLetter {
  v: 1
  region: string
  reason: DeadLetterReason
  /** What went wrong, in words. */
  detail: string
  /** The target's status, when it answered. */
  status: number | null
  /** First bytes of the target's answer. */
  excerpt: string
  /** Null when the event was too malformed to have one. */
  eventId: string | null
  resource: string | null
  method: string | null
  path: string | null
  /** Where the event sat in the event stream. */
  streamSeq: number
  subject: string
  failedAt: string
  attempts: number
  /**
   * The event's bytes as they were on the stream (base64), and their signature, for a replay. The
   * payload is null when the letter could not hold it (an event near the message size limit:
   * base64 adds a third); a replay then reads the event from the event stream at `streamSeq`.
   */
  payload: string | null
  signature: string | null
}

/**
 * Publishes a dead letter and waits for JetStream to hold it; only then is the event acknowledged
 * (I2). The message id makes a retry after a crash land once.
 */
export async function publishDeadLetter (js: JetStreamClient, n: Names, letter: DeadLetter, maxPayloadBytes: number): Promise<void> {
  let data = JSON.stringify(letter)
  // Else the letter of a large event is refused by the server and the event is retried forever.
  if (Buffer.byteLength(data) > maxPayloadBytes - LETTER_HEADROOM_BYTES) data = JSON.stringify({ ...letter, payload: null })
  await js.publish(n.dlqSubject(letter.region), data, { msgID: `${letter.region}:${letter.streamSeq}` })
}

/** Room left in a letter's message for its headers. */
const LETTER_HEADROOM_BYTES = 4096

export interface StoredDeadLetter extends DeadLetter {
  dlqSeq: number
}

/** Dead letters of one region, oldest first. */
export async function listDeadLetters (jsm: JetStreamManager, n: Names, region: string, limit = 1000): Promise<StoredDeadLetter[]> {
  const out: StoredDeadLetter[] = []
  if (limit <= 0) return out
  // Walks only this region's letters.
  for await (const msg of walkSubject(jsm, n.dlqStream, n.dlqSubject(region), 1)) {
    out.push({ ...msg.json<DeadLetter>(), dlqSeq: msg.seq })
    if (out.length >= limit) break
  }
  return out
}

/** One dead letter by its sequence in the dead-letter stream; null when it is gone. */
export async function loadDeadLetter (jsm: JetStreamManager, n: Names, dlqSeq: number): Promise<StoredDeadLetter | null> {
  try {
    const msg = await jsm.streams.getMessage(n.dlqStream, { seq: dlqSeq })
    return msg === null ? null : { ...msg.json<DeadLetter>(), dlqSeq: msg.seq }
  } catch (err) {
    if (isNotFound(err)) return null
    throw err
  }
}

/**
 * True when the region has handled a newer event for the letter's resource since the letter was
 * written: replaying it now would put older data over newer. The events after it on its partition,
 * up to the partition consumer's ack floor, are the ones the region has handled.
 */
export async function isSuperseded (jsm: JetStreamManager, n: Names, letter: DeadLetter): Promise<boolean> {
  const partition = partitionOfSubject(letter.subject)
  if (partition === null) return false
  let floor: number
  try {
    floor = (await jsm.consumers.info(n.eventStream, n.consumer(letter.region, partition))).ack_floor.stream_seq
  } catch (err) {
    if (isNotFound(err)) return false
    throw err
  }
  for await (const msg of walkSubject(jsm, n.eventStream, n.partitionFilter(partition), letter.streamSeq + 1, floor)) {
    try {
      if (msg.json<{ resource?: unknown }>().resource === letter.resource) return true
    } catch {
      // A malformed event names no resource.
    }
  }
  return false
}
