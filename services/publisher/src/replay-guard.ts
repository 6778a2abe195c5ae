import type { NatsConnection } from '@nats-io/transport-node'
import { RegionRecords, type Names } from '@regionsync/shared'

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
  readonly #records: RegionRecords

  private constructor (records: RegionRecords) {
    this.#records = records
  }

  static async open (nc: NatsConnection, n: Names, region: string, ttlMs: number, replicas: number): Promise<ReplayGuard> {
    return new ReplayGuard(await RegionRecords.open(nc, n.replayBucket, region, { ttlMs, replicas, description: 'regionsync: replays answered per region' }))
  }

  async lookup (eventId: string): Promise<RecordedAnswer | null> {
    const value = await this.#records.get(eventId)
    return value === null ? null : JSON.parse(value) as RecordedAnswer
  }

  async record (eventId: string, answer: RecordedAnswer): Promise<void> {
    await this.#records.put(eventId, JSON.stringify(answer))
  }

  close (): void {
    this.#records.close()
  }
}
