import type { JetStreamManager, StoredMsg } from '@nats-io/jetstream'

/**
 * The tests' one way to read a stream: every message it holds from `fromSeq` on, in stream order
 * (one get per sequence, fine at test sizes; removed messages are skipped).
 */
export async function streamMessages (jsm: JetStreamManager, stream: string, fromSeq = 1): Promise<StoredMsg[]> {
  const last = (await jsm.streams.info(stream)).state.last_seq
  const out: StoredMsg[] = []
  for (let seq = fromSeq; seq <= last; seq++) {
    const m = await jsm.streams.getMessage(stream, { seq })
    if (m !== null) out.push(m)
  }
  return out
}
