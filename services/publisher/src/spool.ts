import { mkdirSync } from 'node:fs'
import { open, type RootDatabase } from 'lmdb'

/** One event waiting for JetStream, exactly as it will be published. */
export interface SpooledEvent {
  /**
   * Null for an event taken before the plugin first reached NATS: its partition (so its subject)
   * is known only once the stream's partition count is; the publisher resolves it from `key`.
   */
  subject: string | null
  /** The event's resource key. */
  key: string
  data: Uint8Array
  signature: string
  msgId: string
}

interface StoredEvent {
  s: string | null
  /** Absent in spools written before keys were stored; those always have a subject. */
  k?: string
  d: Uint8Array
  g: string
  i: string
}

/**
 * The publisher's outage spool: events JetStream could not take, in the order they were accepted,
 * durable before the client's 2xx leaves (I1). It is an LMDB environment: a crash-safe,
 * memory-mapped B-tree with ordered integer keys, so the FIFO, its recovery after `kill -9` and its
 * fsync on commit are LMDB's, not a file format of ours. `overlappingSync: false` makes a write's
 * promise resolve only once the commit is flushed to disk.
 */
export class Spool {
  readonly maxEvents: number
  readonly #db: RootDatabase<StoredEvent, number>
  #nextKey: number
  #size: number
  #reserved = 0

  private constructor (db: RootDatabase<StoredEvent, number>, maxEvents: number) {
    this.#db = db
    this.maxEvents = maxEvents
    let last = 0
    for (const key of db.getKeys({ reverse: true, limit: 1 })) last = key
    this.#nextKey = last + 1
    this.#size = db.getCount()
  }

  static open (dir: string, maxEvents: number): Spool {
    mkdirSync(dir, { recursive: true })
    const db = open<StoredEvent, number>({ path: dir, overlappingSync: false, compression: false, keyEncoding: 'uint32' })
    return new Spool(db, maxEvents)
  }

  /** Events stored and not yet published. */
  get size (): number {
    return this.#size
  }

  get isEmpty (): boolean {
    return this.#size === 0
  }

  /**
   * Holds a place for a write that may need the spool, taken before its handler runs, so a write
   * is refused up front rather than committed with nowhere to go. False when full.
   */
  reserve (): boolean {
    if (this.#size + this.#reserved >= this.maxEvents) return false
    this.#reserved++
    return true
  }

  release (): void {
    if (this.#reserved > 0) this.#reserved--
  }

  /** Appends an event; resolves once it is on disk. */
  async append (e: SpooledEvent): Promise<void> {
    const key = this.#nextKey++
    this.#size++
    try {
      await this.#db.put(key, { s: e.subject, k: e.key, d: e.data, g: e.signature, i: e.msgId })
    } catch (err) {
      this.#size--
      throw err
    }
  }

  /** The oldest events, in order. */
  oldest (limit: number): Array<{ key: number, event: SpooledEvent }> {
    const out: Array<{ key: number, event: SpooledEvent }> = []
    for (const { key, value } of this.#db.getRange({ limit })) {
      out.push({ key, event: { subject: value.s, key: value.k ?? '', data: value.d, signature: value.g, msgId: value.i } })
    }
    return out
  }

  async remove (key: number): Promise<void> {
    if (await this.#db.remove(key)) this.#size--
  }

  async close (): Promise<void> {
    await this.#db.close()
  }
}
