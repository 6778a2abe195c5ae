import { Kvm, type KV } from '@nats-io/kv'
import type { NatsConnection } from '@nats-io/transport-node'
import type { Names } from '@regionsync/shared'

/** Bodies up to this size are kept to answer a duplicate replay with; larger ones keep the status only. */
export const MAX_RECORDED_BODY_BYTES = 64 * 1024

export interface RecordedAnswer {
  status: number
  contentType: string | null
  /** base64; empty when the body was larger than MAX_RECORDED_BODY_BYTES. */
  body: string
}

/**
 * What the plugin on a target remembers of the replays it applied (I4), in JetStream KV with a
 * TTL, per region: a replay whose Idempotency-Key is there is not run again but answered as the
 * first application was. It covers the one gap the replicator's own record cannot: a crash between
 * the target's 2xx and the replicator writing its record.
 */
export class ReplayGuard {
  readonly #kv: KV
  readonly #region: string

  private constructor (kv: KV, region: string) {
    this.#kv = kv
    this.#region = region
  }

  static async open (nc: NatsConnection, n: Names, region: string, ttlMs: number, replicas: number): Promise<ReplayGuard> {
    const kv = await new Kvm(nc).create(n.replayBucket, { history: 1, ttl: ttlMs, replicas, description: 'regionsync: replays answered per region' })
    return new ReplayGuard(kv, region)
  }

  async lookup (eventId: string): Promise<RecordedAnswer | null> {
    const e = await this.#kv.get(this.#key(eventId))
    if (e === null || e.operation !== 'PUT') return null
    return e.json<RecordedAnswer>()
  }

  async record (eventId: string, answer: RecordedAnswer): Promise<void> {
    await this.#kv.put(this.#key(eventId), JSON.stringify(answer))
  }

  #key (eventId: string): string {
    return `${this.#region}.${eventId.replace(/[^-\w]/g, '_')}`
  }
}
