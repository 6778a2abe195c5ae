import type { JetStreamManager } from '@nats-io/jetstream'
import { isNotFound, type Names } from '@regionsync/shared'

/** Every form a secret could take in stored bytes: as is, base64, base64url, hex, URL-encoded. */
function formsOf (secret: string): Buffer[] {
  const b = Buffer.from(secret)
  return [...new Set([secret, b.toString('base64'), b.toString('base64url'), b.toString('hex'), encodeURIComponent(secret)])].map((f) => Buffer.from(f))
}

export interface ScanResult {
  /** Messages read, per stream. */
  messages: Record<string, number>
  /** Where a secret showed up: stream, sequence, which secret. Empty when none did. */
  found: string[]
}

/** The namespace's streams: events, dead letters and the KV buckets (applied ids, replay answers, id map, entity records, translating types). */
export function streamsOf (n: Names): string[] {
  return [n.eventStream, n.dlqStream, `KV_${n.appliedBucket}`, `KV_${n.replayBucket}`, `KV_${n.entityBucket}`, `KV_${n.idTypesBucket}`]
}

/**
 * Reads every message of every stream of the namespace, byte for byte, and looks for each secret
 * in every form, in headers and data; in a dead letter also inside the event payload it keeps
 * (base64 of a whole event hides a secret inside it from a plain search).
 */
export async function scanForSecrets (jsm: JetStreamManager, n: Names, secrets: string[], extraText: Record<string, string> = {}): Promise<ScanResult> {
  const needles = secrets.map((s) => ({ s, forms: formsOf(s) }))
  const found: string[] = []
  const messages: Record<string, number> = {}
  const look = (where: string, bytes: Buffer): void => {
    for (const { s, forms } of needles) {
      if (forms.some((f) => bytes.includes(f))) found.push(`${where}: ${s.slice(0, 12)}...`)
    }
  }
  for (const stream of streamsOf(n)) {
    let info
    try {
      info = await jsm.streams.info(stream)
    } catch (err) {
      if (isNotFound(err)) continue
      throw err
    }
    messages[stream] = 0
    const { first_seq: first, last_seq: last } = info.state
    const BATCH = 64
    for (let from = first; from <= last && last > 0; from += BATCH) {
      const seqs = Array.from({ length: Math.min(BATCH, last - from + 1) }, (_, i) => from + i)
      const got = await Promise.all(seqs.map(async (seq) => {
        try {
          return await jsm.streams.getMessage(stream, { seq })
        } catch (err) {
          if (isNotFound(err)) return null
          throw err
        }
      }))
      for (const m of got) {
        if (m === null) continue
        messages[stream]++
        const where = `${stream}#${m.seq}`
        const headerText = m.header === undefined ? '' : [...m.header.keys()].map((k) => `${k}: ${m.header!.values(k).join(',')}`).join('\n')
        look(`${where} headers`, Buffer.from(headerText))
        const data = Buffer.from(m.data)
        look(where, data)
        if (stream === n.dlqStream) {
          try {
            const letter = JSON.parse(data.toString('utf8')) as { payload?: string }
            if (typeof letter.payload === 'string') look(`${where} payload`, Buffer.from(letter.payload, 'base64'))
          } catch {
            found.push(`${where}: not a JSON dead letter`)
          }
        }
      }
    }
  }
  for (const [where, text] of Object.entries(extraText)) look(where, Buffer.from(text))
  return { messages, found }
}
