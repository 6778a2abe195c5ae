import { AckPolicy, DeliverPolicy, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream'

export interface StoredMessage {
  seq: number
  subject: string
  data: Uint8Array
  headers: { get: (name: string) => string } | undefined
}

/** How long the temporary reader may sit unused before the server removes it on its own. */
const READER_INACTIVE_MS = 30_000

/**
 * Every message on `filter` with a stream sequence from `fromSeq` to `toSeq`, in order, through a
 * temporary consumer: one request for the whole range, not one per message (which at a WAN round
 * trip would make a partition takeover take seconds per hundred events). Stops after `max`.
 */
export async function readSubjectRange (js: JetStreamClient, jsm: JetStreamManager, stream: string, filter: string, fromSeq: number, toSeq: number, max = 100_000): Promise<StoredMessage[]> {
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
    // num_pending counts matches from fromSeq to the stream's end: asking for no more than that,
    // the fetch ends as soon as they are in instead of waiting out its expiry.
    const wanted = Math.min(max, info.num_pending, toSeq - fromSeq + 1)
    if (wanted === 0) return out
    const consumer = await js.consumers.get(stream, info.name)
    const batch = await consumer.fetch({ max_messages: wanted, expires: 5000 })
    try {
      for await (const m of batch) {
        if (m.seq > toSeq) break
        out.push({ seq: m.seq, subject: m.subject, data: m.data, headers: m.headers })
        if (out.length >= wanted) break
      }
    } finally {
      batch.stop()
    }
  } finally {
    await jsm.consumers.delete(stream, info.name).catch(() => {})
  }
  return out
}
