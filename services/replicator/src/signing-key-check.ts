import type { JetStreamManager } from '@nats-io/jetstream'
import { EVENT_SIGNATURE_HEADER, isNotFound, type Names, type Signer } from '@regionsync/shared'

/** How far back from the stream's last sequence to look for an event that verifies. */
const LOOK_BACK = 16

export type SigningKeyCheck =
  | { kind: 'verified', seq: number }
  | { kind: 'no-events' }
  | { kind: 'mismatch', seq: number }

/**
 * Whether the signer verifies one of the newest events on the stream. A replicator started with the wrong
 * key would otherwise dead-letter every event as `bad-signature`; checked once, before it consumes.
 */
export async function checkSigningKey (jsm: JetStreamManager, n: Names, signer: Signer): Promise<SigningKeyCheck> {
  let last: number
  try {
    last = (await jsm.streams.info(n.eventStream)).state.last_seq
  } catch (err) {
    if (isNotFound(err)) return { kind: 'no-events' }
    throw err
  }
  // One forged or corrupt event (dead-lettered when it comes) must not stop every restart: the key
  // is wrong only when none of the newest events verifies.
  let newest: number | null = null
  for (let seq = last; seq > 0 && seq > last - LOOK_BACK; seq--) {
    let m
    try {
      m = await jsm.streams.getMessage(n.eventStream, { seq })
    } catch (err) {
      if (isNotFound(err)) continue
      throw err
    }
    if (m === null) continue
    newest ??= seq
    try {
      signer.verifyEvent(m.data, m.header?.get(EVENT_SIGNATURE_HEADER) || undefined)
      return { kind: 'verified', seq }
    } catch {
      // Look further back.
    }
  }
  return newest === null ? { kind: 'no-events' } : { kind: 'mismatch', seq: newest }
}
