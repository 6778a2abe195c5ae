import type { NatsConnection } from '@nats-io/transport-node'
import { RegionRecords, type Names } from '@regionsync/shared'

/** Kept a day longer than events, so no redelivery can outlive the record that it was applied. */
export const APPLIED_TTL_MARGIN_MS = 86_400_000

/**
 * Which events a region has applied (I4), in JetStream KV so every instance of the region sees
 * what any other applied. Written after the target's 2xx and before the ack: a crash between the
 * two leaves the record, and the redelivery is acknowledged without a second replay.
 */
export class AppliedLog {
  readonly #records: RegionRecords

  private constructor (records: RegionRecords) {
    this.#records = records
  }

  static async open (nc: NatsConnection, n: Names, region: string, streamMaxAgeMs: number, replicas: number): Promise<AppliedLog> {
    return new AppliedLog(await RegionRecords.open(nc, n.appliedBucket, region, {
      ttlMs: streamMaxAgeMs + APPLIED_TTL_MARGIN_MS,
      replicas,
      description: 'regionsync: event ids applied per region'
    }))
  }

  async has (eventId: string): Promise<boolean> {
    return await this.#records.get(eventId) !== null
  }

  async record (eventId: string, status: number): Promise<void> {
    await this.#records.put(eventId, JSON.stringify({ status, at: new Date().toISOString() }))
  }

  close (): void {
    this.#records.close()
  }
}
