import type { NatsConnection } from '@nats-io/transport-node'
import { RegionRecords, recordTtlMs, type Names } from '@regionsync/shared'

/** Event ids this instance settled lately, remembered in memory: more than one window of every partition. */
const RECENT_LIMIT = 20_000

/**
 * Which events a region has applied (I4), in JetStream KV so every instance of the region sees
 * what any other applied. Written after the target's 2xx and before the ack: a crash between the
 * two leaves the record, and the redelivery is acknowledged without a second replay.
 */
export class AppliedLog {
  readonly #records: RegionRecords
  readonly #recent = new Set<string>()

  private constructor (records: RegionRecords) {
    this.#records = records
  }

  static async open (nc: NatsConnection, n: Names, region: string, streamMaxAgeMs: number, replicas: number): Promise<AppliedLog> {
    return new AppliedLog(await RegionRecords.open(nc, n.appliedBucket, region, {
      // Kept longer than events, so no redelivery can outlive the record that it was applied.
      ttlMs: recordTtlMs(streamMaxAgeMs),
      replicas,
      description: 'regionsync: event ids applied per region'
    }))
  }

  async has (eventId: string): Promise<boolean> {
    return this.#recent.has(eventId) || await this.#records.get(eventId) !== null
  }

  /**
   * True when this instance settled the event itself lately. Costs nothing, so it is asked for
   * every event: the same event stored twice (a publisher's retry past the duplicate window) is
   * not sent twice while its first record is still on its way.
   */
  settledHere (eventId: string): boolean {
    return this.#recent.has(eventId)
  }

  /** `outcome`: applied, already-applied, superseded or dead (a dead letter is final too). */
  async record (eventId: string, outcome: string): Promise<void> {
    // A dead letter is final for the stream, not for `dlq replay`, which must be able to send it.
    if (outcome !== 'dead') this.#recent.add(eventId)
    if (this.#recent.size > RECENT_LIMIT) this.#recent.delete(this.#recent.values().next().value as string)
    await this.#records.put(eventId, JSON.stringify({ outcome, at: new Date().toISOString() }))
  }

  close (): void {
    this.#records.close()
  }
}
