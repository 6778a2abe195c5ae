import { AckPolicy, DeliverPolicy, type JetStreamManager, type MsgRequest, type StoredMsg } from '@nats-io/jetstream'
import { createInbox, type Msg, type MsgHdrs, type NatsConnection } from '@nats-io/transport-node'
import { isNotFound } from './stream-setup.js'

export interface StoredMessage {
  seq: number
  subject: string
  data: Uint8Array
  headers: MsgHdrs | undefined
}

/**
 * The first message on `subject` (wildcards allowed) at or after stream sequence `seq`; null when
 * there is none, or no such stream. One request per message: for a range of many, readSubjectRange.
 */
export async function nextBySubject (jsm: JetStreamManager, stream: string, subject: string, seq: number): Promise<StoredMsg | null> {
  try {
    // The server (2.9 included) answers next_by_subj on STREAM.MSG.GET; the client's type lists it
    // only for direct get, which would need allow_direct on the stream.
    return await jsm.streams.getMessage(stream, { next_by_subj: subject, seq } as unknown as MsgRequest)
  } catch (err) {
    if (isNotFound(err)) return null
    throw err
  }
}

/**
 * The messages on `subject` from `fromSeq` to `toSeq` (inclusive), in order, one request each, for
 * walks that usually stop early (the caller breaks out).
 */
export async function * walkSubject (jsm: JetStreamManager, stream: string, subject: string, fromSeq: number, toSeq = Number.MAX_SAFE_INTEGER): AsyncGenerator<StoredMsg> {
  let seq = fromSeq
  while (seq <= toSeq) {
    const msg = await nextBySubject(jsm, stream, subject, seq)
    if (msg === null || msg.seq > toSeq) return
    yield msg
    seq = msg.seq + 1
  }
}

/** How long the temporary reader may sit unused before the server removes it on its own. */
const READER_INACTIVE_MS = 30_000
/** Messages asked for per pull. */
const READ_BATCH = 256
/** A pull that gets no answer at all in this long: the server is gone. */
const READ_TIMEOUT_MS = 10_000

/**
 * Every message on `filter` with a stream sequence from `fromSeq` to `toSeq`, in order, through a
 * temporary consumer and pulls that answer with what is there and end (no_wait): a few requests
 * for the whole range, not one per message (at a WAN round trip a partition takeover would take
 * seconds per hundred events), and no waiting out a pull's expiry. Stops after `max`.
 */
export async function readSubjectRange (nc: NatsConnection, jsm: JetStreamManager, stream: string, filter: string, fromSeq: number, toSeq: number, max = 100_000): Promise<StoredMessage[]> {
  if (toSeq < fromSeq) return []
  const info = await jsm.consumers.add(stream, {
    filter_subject: filter,
    deliver_policy: DeliverPolicy.StartSequence,
    opt_start_seq: fromSeq,
    ack_policy: AckPolicy.None,
    mem_storage: true,
    num_replicas: 1,
    inactive_threshold: READER_INACTIVE_MS * 1_000_000
  })
  const out: StoredMessage[] = []
  try {
    for (;;) {
      const { messages, ended } = await pullNoWait(nc, `$JS.API.CONSUMER.MSG.NEXT.${stream}.${info.name}`, READ_BATCH)
      for (const m of messages) {
        if (m.seq > toSeq || out.length >= max) return out
        out.push(m)
      }
      // Fewer than asked for: that was all there is.
      if (ended || messages.length < READ_BATCH) return out
    }
  } finally {
    await jsm.consumers.delete(stream, info.name).catch(() => {})
  }
}

async function pullNoWait (nc: NatsConnection, subject: string, batch: number): Promise<{ messages: StoredMessage[], ended: boolean }> {
  const inbox = createInbox()
  const messages: StoredMessage[] = []
  return await new Promise((resolve, reject) => {
    const timer = setTimeout(() => { sub.unsubscribe(); reject(new Error(`no answer to a pull on ${subject}`)) }, READ_TIMEOUT_MS)
    const finish = (ended: boolean): void => { clearTimeout(timer); sub.unsubscribe(); resolve({ messages, ended }) }
    const sub = nc.subscribe(inbox, {
      callback: (err, msg: Msg) => {
        if (err !== null) { clearTimeout(timer); sub.unsubscribe(); reject(err); return }
        const code = msg.headers?.code ?? 0
        if (code !== 0 && msg.data.length === 0) { finish(code !== 100); return }
        const info = msg.reply === undefined ? null : parseAckSubject(msg.reply)
        if (info !== null) messages.push({ seq: info.seq, subject: msg.subject, data: msg.data, headers: msg.headers })
        if (messages.length >= batch) finish(false)
      }
    })
    nc.publish(subject, JSON.stringify({ batch, no_wait: true }), { reply: inbox })
  })
}

/**
 * Stream sequence, delivery count and consumer sequence from a `$JS.ACK` reply subject: the
 * 9-token form (`$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>`) or the
 * newer form with a domain and an account hash before the stream. The consumer sequence numbers
 * every delivery of the consumer, redeliveries included (2.9 and 2.15 alike), so a jump in it
 * means a delivery that never arrived.
 */
export function parseAckSubject (reply: string): { seq: number, deliveryCount: number, consumerSeq: number } | null {
  const t = reply.split('.')
  if (t[0] !== '$JS' || t[1] !== 'ACK') return null
  const at = t.length === 9 ? 2 : t.length >= 11 ? 4 : -1
  if (at < 0) return null
  const deliveryCount = Number(t[at + 2])
  const seq = Number(t[at + 3])
  const consumerSeq = Number(t[at + 4])
  return Number.isSafeInteger(seq) && Number.isSafeInteger(deliveryCount) && Number.isSafeInteger(consumerSeq) ? { seq, deliveryCount, consumerSeq } : null
}
