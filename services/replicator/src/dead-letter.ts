import type { JetStreamClient, JetStreamManager, MsgRequest } from '@nats-io/jetstream'
import { isNotFound, type Names } from '@regionsync/shared'

export const DEAD_LETTER_REASONS = ['malformed', 'bad-signature', 'bad-path', 'undecryptable', 'rejected', 'too-many-attempts'] as const
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
  /** The event's bytes as they were on the stream (base64), and their signature, for a replay. */
  payload: string
  signature: string | null
}

/**
 * Publishes a dead letter and waits for JetStream to hold it; only then is the event acknowledged
 * (I2). The message id makes a retry after a crash land once.
 */
export async function publishDeadLetter (js: JetStreamClient, n: Names, letter: DeadLetter): Promise<void> {
  await js.publish(n.dlqSubject(letter.region), JSON.stringify(letter), { msgID: `${letter.region}:${letter.streamSeq}` })
}

export interface StoredDeadLetter extends DeadLetter {
  dlqSeq: number
}

/** Dead letters of one region, oldest first. */
export async function listDeadLetters (jsm: JetStreamManager, n: Names, region: string, limit = 1000): Promise<StoredDeadLetter[]> {
  const out: StoredDeadLetter[] = []
  let seq = 1
  while (out.length < limit) {
    let msg
    try {
      // next_by_subj walks only this region's letters; see lag.ts for why the cast.
      msg = await jsm.streams.getMessage(n.dlqStream, { next_by_subj: n.dlqSubject(region), seq } as unknown as MsgRequest)
    } catch (err) {
      if (isNotFound(err)) break
      throw err
    }
    if (msg === null) break
    out.push({ ...msg.json<DeadLetter>(), dlqSeq: msg.seq })
    seq = msg.seq + 1
  }
  return out
}
