import type { NatsConnection } from '@nats-io/transport-node'
import { RegionRecords, recordTtlMs, type Names } from '@regionsync/shared'

/** Event ids this instance settled lately, remembered in memory: more than one window of every partition. */
const RECENT_LIMIT = 20_000

/**
 * Which events a region has applied (I4), in JetStream KV so every instance of the region sees
 * what any other applied. Written after the target's 2xx and before the ack: a crash between the
 * two leaves the record, and the redelivery is acknowledged without a second replay. A replayed
 * create or DELETE that the target's guard recorded (`x-regionsync-outcome: applied`) is not
 * written here: its entity's record, written before the ack too, names it
 * (EntityRecord.createdEvent, deletedEvent), and a redelivery reads both.
 */
export class AppliedLog {
  readonly #records: RegionRecords
  readonly #recent = new Set<string>()
  /**
   * The same ids in the order they came, a ring: the oldest leaves when the ring is full. Not the
   * Set's own first entry: V8 leaves a deleted entry's slot in place until the table is rebuilt,
   * so finding the first live one walks every slot freed since (about 7 us per event measured).
   */
  readonly #order: Array<string | undefined> = new Array<string | undefined>(RECENT_LIMIT)
  #oldest = 0

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
    if (outcome !== 'dead') this.remember(eventId)
    await this.#records.put(eventId, JSON.stringify({ outcome, at: new Date().toISOString() }))
  }

  /** Notes an event settled here whose record is kept elsewhere (its entity's record). */
  remember (eventId: string): void {
    if (this.#recent.has(eventId)) return
    const evicted = this.#order[this.#oldest]
    if (evicted !== undefined) this.#recent.delete(evicted)
    this.#order[this.#oldest] = eventId
    this.#oldest = (this.#oldest + 1) % RECENT_LIMIT
    this.#recent.add(eventId)
  }

  close (): void {
    this.#records.close()
  }
}
