import { Kvm } from '@nats-io/kv'
import type { NatsConnection } from '@nats-io/transport-node'
import type { Names } from './names.js'
import { isNotFound, retryTimeouts } from './stream-setup.js'

/** What the last `regionsync verify` found for one region, as `regionsync status` and the dashboard show it. */
export interface VerifySummary {
  region: string
  /** Divergent resources (missing, extra or different), over every type. */
  divergent: number
  /** The same, per type. */
  byType: Record<string, number>
  /** When the last full check finished (ISO 8601). */
  checkedAt: string
}

/**
 * Verify summaries live in a KV bucket of their own, one key per region: a verify run writes
 * them, `regionsync status` reads them; neither needs the other to be running.
 */
export function verifyBucket (n: Names): string {
  return `${n.namespace}_verify`
}

export async function writeVerifySummaries (nc: NatsConnection, n: Names, summaries: VerifySummary[]): Promise<void> {
  const kv = await retryTimeouts(async () => await new Kvm(nc).create(verifyBucket(n), { history: 1, description: 'last regionsync verify per region' }))
  for (const s of summaries) await kv.put(s.region, JSON.stringify(s))
}

/** Every region's last summary; empty when verify never ran. */
export async function readVerifySummaries (nc: NatsConnection, n: Names): Promise<Map<string, VerifySummary>> {
  const out = new Map<string, VerifySummary>()
  let kv
  try {
    kv = await new Kvm(nc).open(verifyBucket(n))
    await kv.status()
  } catch (err) {
    if (isNotFound(err)) return out
    throw err
  }
  for await (const key of await kv.keys()) {
    const e = await kv.get(key)
    if (e === null || e.operation !== 'PUT') continue
    try {
      const s = e.json<VerifySummary>()
      if (typeof s.divergent === 'number' && typeof s.checkedAt === 'string') out.set(key, s)
    } catch {
      // A value this build does not read; the column shows nothing for it.
    }
  }
  return out
}
