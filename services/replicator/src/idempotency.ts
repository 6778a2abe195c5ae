import { Kvm, type KV } from '@nats-io/kv'
import type { NatsConnection } from '@nats-io/transport-node'
import type { Names } from '@regionsync/shared'

/** Kept a day longer than events, so no redelivery can outlive the record that it was applied. */
export const APPLIED_TTL_MARGIN_MS = 86_400_000

/**
 * Which events a region has applied (I4), in JetStream KV so every instance of the region sees
 * what any other applied. Written after the target's 2xx and before the ack: a crash between the
 * two leaves the record, and the redelivery is acknowledged without a second replay.
 */
export class AppliedLog {
  readonly #kv: KV
  readonly #region: string

  private constructor (kv: KV, region: string) {
    this.#kv = kv
    this.#region = region
  }

  static async open (nc: NatsConnection, n: Names, region: string, streamMaxAgeMs: number, replicas: number): Promise<AppliedLog> {
    const kv = await new Kvm(nc).create(n.appliedBucket, {
      history: 1,
      ttl: streamMaxAgeMs + APPLIED_TTL_MARGIN_MS,
      replicas,
      description: 'regionsync: event ids applied per region'
    })
    return new AppliedLog(kv, region)
  }

  async has (eventId: string): Promise<boolean> {
    const e = await this.#kv.get(this.#key(eventId))
    return e !== null && e.operation === 'PUT'
  }

  async record (eventId: string, status: number): Promise<void> {
    await this.#kv.put(this.#key(eventId), JSON.stringify({ status, at: new Date().toISOString() }))
  }

  #key (eventId: string): string {
    return `${this.#region}.${eventId.replace(/[^-\w]/g, '_')}`
  }
}
