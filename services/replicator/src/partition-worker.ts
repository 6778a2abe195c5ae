import { retryUntil, type Logger } from '@regionsync/shared'
import type { AckHandle, Delivery, PullRequest } from './pull-stream.js'

/** One event of an owned partition, from its delivery (or the takeover's read) to its ack. */
export interface Entry {
  seq: number
  subject: string
  data: Uint8Array
  signature: string | undefined
  deliveryCount: number
  /** Null for an event read from the stream at takeover, still held by the previous owner's delivery. */
  handle: AckHandle | null
  /** Events with the same key are applied one after another, in stream order. */
  key: string
  /** The event as decoded once on arrival (opaque here); null when it could not be. */
  decoded: unknown
  /** Read the applied log before replaying: a redelivery, a takeover, or just after one. */
  verify: boolean
  attempt: number
  lastSignalAt: number
  acked: boolean
}

/** What one attempt at an event came to. */
export type Step =
  | { kind: 'done' }
  | { kind: 'dead' }
  | { kind: 'retry', delayMs: number }
  /** This instance no longer owns the partition: send nothing more, hand the event back. */
  | { kind: 'fenced' }

/** A message of the partition read straight from the stream. */
export interface StoredEvent {
  seq: number
  subject: string
  data: Uint8Array
  signature: string | undefined
}

export interface PartitionWorkerDeps {
  partition: number
  /** Events held at once (delivered and not yet acknowledged, or asked for). */
  window: () => number
  /** The consumer's ack wait: a held event is signalled as in progress well within it. */
  ackWaitMs: number
  /** True while this instance may act for the partition. */
  owns: () => boolean
  /** An event found the partition no longer owned while the worker was not stopping: give it up. */
  fenced: () => void
  /** How long it may still act without another renewal; no pull outlives it. */
  validForMs: () => number
  /** Decodes the event once: its resource key and what the other steps will read. Null when it cannot be decoded. */
  decode: (data: Uint8Array) => { key: string, decoded: unknown } | null
  /** True when the region's applied log has the event. */
  isApplied: (e: Entry) => Promise<boolean>
  /** One attempt: verify, replay, judge. Checks ownership right before it sends. */
  run: (e: Entry) => Promise<Step>
  /** Records what was decided (applied, dead letter) before the server is answered. */
  settle: (e: Entry, step: Step & { kind: 'done' | 'dead' }) => Promise<void>
  /** Events the previous owner may still have held: (ack floor, last delivered] of the partition. */
  outstanding: () => Promise<StoredEvent[]>
  /** The partition's events strictly between two stream sequences, read from the stream. */
  between: (afterSeq: number, beforeSeq: number) => Promise<StoredEvent[]>
  pulls: (handlers: { onDelivery: (d: Delivery) => void, onEnded: (status: number | null) => void }) => PullSource
  log: Logger
}

export interface PullSource {
  readonly requested: number
  readonly live: number
  readonly allExpireAt: number
  pull: (r: PullRequest) => void
  stop: () => void
  close: () => void
}

/** Longest life of one pull; the lease's remaining validity shortens it further. */
const PULL_MAX_MS = 1000
/**
 * A pull expires on the server this long before this instance's ownership could lapse, so no pull
 * of an owner that stopped renewing (killed, frozen) is still served when another instance takes
 * the partition. Covers the pull's one-way trip on a distant link.
 */
const PULL_MARGIN_MS = 250
/** Below this much ownership left, no new pull goes out until the lease is renewed. */
const MIN_PULL_MS = 100
/** How often the worker tops up its window and signals long-held events. */
const TICK_MS = 200
/**
 * After a takeover, every event is checked against the applied log until this many in a row turn
 * out not applied: past the previous owner's last work, a first delivery is new. Also covers a
 * server whose consumer state rolled back after a crash (delivery counts start again at 1).
 */
const VERIFY_STREAK = 64

/**
 * Applies one owned partition: keeps up to `window` events in flight, one lane per resource key
 * (events of a key one after another in stream order, different keys at once: the model of a
 * key-ordered parallel consumer), and acknowledges each event once what it came to is recorded.
 * A failing event holds back only its own resource.
 */
export class PartitionWorker {
  readonly #d: PartitionWorkerDeps
  readonly #held = new Map<number, Entry>()
  readonly #lanes = new Map<string, Entry[]>()
  readonly #running = new Set<Promise<void>>()
  #pulls: PullSource | null = null
  #timer: NodeJS.Timeout | null = null
  #stopping: 'release' | 'lost' | null = null
  #verifyMisses = 0
  #verifying = true
  /** Ends every retry wait at once (on stop). */
  readonly #wakers = new Set<() => void>()
  #appliedThrough = 0
  /** The consumer sequence of the last delivery received; 0 before the first. */
  #lastDelivery = 0
  /** Highest stream sequence received or read: no event above it runs before what lies below is known. */
  #highest = 0
  /**
   * A delivery never arrived (its connection's server died with it on the way, say): the server
   * counts it as delivered and sends it again only after the ack wait, so a later event of its
   * resource could run first. Holds the consumer sequence of the delivery that showed the gap (0
   * when none): until a first delivery numbered at least that arrives with the stream read up to
   * it, every event above #highest waits for the stream to be read below it.
   */
  #missedAt = 0
  /** Deliveries held back while the stream is read for missing ones, in arrival order. */
  readonly #queued: Delivery[] = []
  #filling = false

  constructor (deps: PartitionWorkerDeps) {
    this.#d = deps
  }

  get partition (): number {
    return this.#d.partition
  }

  /** Events held now. */
  get held (): number {
    return this.#held.size
  }

  /** Highest stream sequence this worker has settled. */
  get appliedThrough (): number {
    return this.#appliedThrough
  }

  /** Reads what the previous owner may have left in flight, then starts pulling. */
  async start (): Promise<void> {
    // Until it is read, no later event may run ahead of one the previous owner left.
    const outstanding = await this.#retrying(async () => await this.#d.outstanding(), 'could not read the partition\'s outstanding events; retrying', () => this.#stopping !== null)
    if (outstanding === null || this.#stopping !== null) return
    for (const s of outstanding) this.#admit({ ...s, deliveryCount: 0, handle: null })
    this.#pulls = this.#d.pulls({ onDelivery: (m) => this.#onDelivery(m), onEnded: () => this.#pump() })
    this.#timer = setInterval(() => this.#tick(), TICK_MS)
    this.#timer.unref()
    this.#pump()
  }

  /** Checks the applied log again for the next events (after a reconnect: the server may have lost state). */
  reverify (): void {
    this.#verifying = true
    this.#verifyMisses = 0
  }

  #onDelivery (m: Delivery): void {
    // The server numbers every delivery of the consumer; a new consumer leader may start lower
    // (it resends what it does not know was delivered), which loses nothing.
    if (this.#lastDelivery > 0 && m.consumerSeq > this.#lastDelivery + 1) {
      this.#missedAt = m.consumerSeq
      this.#d.log.info({ partition: this.partition, expected: this.#lastDelivery + 1, got: m.consumerSeq }, 'a delivery never arrived; reading the partition for it')
    }
    this.#lastDelivery = m.consumerSeq
    if (this.#filling) {
      this.#queued.push(m)
      return
    }
    this.#take(m)
  }

  #take (m: Delivery): void {
    const held = this.#held.get(m.seq)
    if (held !== undefined) {
      // Redelivered while still held (the ack wait ran out, or it was the previous owner's):
      // answer through the newest delivery.
      if (held.acked) m.handle.ack()
      else { held.handle = m.handle; held.deliveryCount = m.deliveryCount; held.lastSignalAt = Date.now() }
      return
    }
    if (this.#stopping !== null) {
      m.handle.nak()
      return
    }
    if (this.#missedAt > 0 && m.seq > this.#highest) {
      if (m.seq > this.#highest + 1) {
        this.#queued.push(m)
        void this.#fill(m.seq)
        return
      }
      // Nothing lies below it unread. The server sends first deliveries in stream order, so once
      // one numbered after the gap is here, every lost first delivery lay below it.
      if (m.deliveryCount === 1 && m.consumerSeq >= this.#missedAt) this.#missedAt = 0
    }
    this.#admit({ seq: m.seq, subject: m.subject, data: m.data, signature: m.headers?.get('Regionsync-Signature') || undefined, deliveryCount: m.deliveryCount, handle: m.handle })
  }

  /**
   * Reads the partition between the highest event known and `beforeSeq` (a delivery held back in
   * #queued), admits what it finds, then the held-back deliveries in order.
   */
  async #fill (beforeSeq: number): Promise<void> {
    this.#filling = true
    try {
      const found = await this.#retrying(async () => await this.#d.between(this.#highest, beforeSeq), 'could not read the partition for a lost delivery; retrying', () => this.#stopping !== null)
      if (found === null || this.#stopping !== null) return
      for (const s of found) if (!this.#held.has(s.seq)) this.#admit({ ...s, deliveryCount: 0, handle: null })
      this.#d.log.info({ partition: this.partition, after: this.#highest, before: beforeSeq, found: found.length }, 'read the partition for a delivery that never arrived')
      this.#highest = Math.max(this.#highest, beforeSeq - 1)
    } finally {
      this.#filling = false
      const queued = this.#queued.splice(0)
      // Stopping: hand them back. Otherwise in order; one may start the next read, and the rest wait for it.
      for (const m of queued) {
        if (this.#filling) this.#queued.push(m)
        else if (this.#stopping !== null) m.handle.nak()
        else this.#take(m)
      }
      this.#pump()
    }
  }

  #admit (s: StoredEvent & { deliveryCount: number, handle: AckHandle | null }): void {
    if (s.seq > this.#highest) this.#highest = s.seq
    const d = this.#d.decode(s.data)
    // Every field spelt out, not `...s`: a spread with fields added builds a slow-mode object here,
    // which cost about 9 us per event to build and slowed every later access to it (measured).
    const e: Entry = {
      seq: s.seq,
      subject: s.subject,
      data: s.data,
      signature: s.signature,
      deliveryCount: s.deliveryCount,
      handle: s.handle,
      key: d?.key ?? `\u0000undecodable:${s.seq}`,
      decoded: d?.decoded ?? null,
      verify: s.handle === null || s.deliveryCount > 1 || this.#verifying,
      attempt: 0,
      lastSignalAt: Date.now(),
      acked: false
    }
    this.#held.set(e.seq, e)
    const lane = this.#lanes.get(e.key)
    if (lane === undefined) {
      const fresh = [e]
      this.#lanes.set(e.key, fresh)
      const run = this.#runLane(e.key, fresh)
      this.#running.add(run)
      void run.finally(() => this.#running.delete(run))
      return
    }
    // Stream order within the lane; the head is already under way and stays first.
    let i = lane.length
    while (i > 1 && (lane[i - 1] as Entry).seq > e.seq) i--
    lane.splice(i, 0, e)
  }

  async #runLane (key: string, lane: Entry[]): Promise<void> {
    try {
      while (lane.length > 0) {
        const e = lane[0] as Entry
        const step = await this.#attempt(e)
        if (step.kind === 'fenced') {
          for (const rest of lane) this.#handBack(rest)
          lane.length = 0
          // Other lanes may go on if ownership comes back with a late renewal, and one of their
          // later events could overtake an event handed back here: the partition starts over
          // under a new ownership instead, which reads what is outstanding first.
          if (this.#stopping === null) this.#d.fenced()
          return
        }
        lane.shift()
        void this.#finish(e, step)
      }
    } finally {
      this.#lanes.delete(key)
    }
  }

  async #attempt (e: Entry): Promise<Exclude<Step, { kind: 'retry' }>> {
    if (e.verify) {
      const applied = await this.#retrying(async () => await this.#d.isApplied(e), 'could not read the applied log; retrying', () => this.#stopping === 'lost' || !this.#d.owns())
      if (applied === null) return { kind: 'fenced' }
      if (applied) {
        this.#verifyMisses = 0
        return { kind: 'done' }
      }
      if (this.#verifying && ++this.#verifyMisses >= VERIFY_STREAK) this.#verifying = false
    }
    for (let failures = 0; ;) {
      if (this.#stopping === 'lost' || !this.#d.owns()) return { kind: 'fenced' }
      e.attempt++
      let step: Step
      try {
        step = await this.#d.run(e)
      } catch (err) {
        // NATS itself failed us (a record or a mapping could not be read): the event stays at the
        // head of its lane and is tried again, as any transient failure.
        this.#d.log.warn({ err, seq: e.seq, partition: this.partition }, 'event handling failed; will retry')
        step = { kind: 'retry', delayMs: Math.min(5000, 250 * 2 ** Math.min(failures++, 5)) }
      }
      if (step.kind !== 'retry') return step
      await this.#sleep(step.delayMs)
    }
  }

  /** Retries a NATS read until it answers, logging the first failure as `failed`; null once `stopped()`. */
  async #retrying<T> (fn: () => Promise<T>, failed: string, stopped: () => boolean): Promise<T | null> {
    return await retryUntil(async () => stopped() ? null : await fn(), {
      delayMs: (attempt) => Math.min(2000, 100 * attempt),
      onRetry: (err, attempt) => { if (attempt === 1) this.#d.log.warn({ err, partition: this.partition }, failed) },
      sleep: async (ms) => { await this.#sleep(ms) }
    })
  }

  async #finish (e: Entry, step: Step & { kind: 'done' | 'dead' }): Promise<void> {
    try {
      await this.#d.settle(e, step)
      if (step.kind === 'dead') e.handle?.term()
      else e.handle?.ack()
      e.acked = true
      if (e.seq > this.#appliedThrough) this.#appliedThrough = e.seq
    } catch (err) {
      // Not recorded: let the server redeliver it; the applied log or the target's guard decides then.
      this.#d.log.warn({ err, seq: e.seq }, 'could not record an event\'s outcome; it will be redelivered')
      e.handle?.nak(1000)
    } finally {
      this.#held.delete(e.seq)
      this.#pump()
    }
  }

  #handBack (e: Entry): void {
    if (e.acked) return
    e.handle?.nak()
    this.#held.delete(e.seq)
  }

  #tick (): void {
    const due = Date.now() - this.#d.ackWaitMs / 3
    for (const e of this.#held.values()) {
      if (e.handle !== null && !e.acked && e.lastSignalAt < due) {
        e.handle.working()
        e.lastSignalAt = Date.now()
      }
    }
    this.#pump()
  }

  /** Asks for as many events as the window has room for, in a pull that ends before ownership can. */
  #pump (): void {
    const pulls = this.#pulls
    if (pulls === null || this.#stopping !== null) return
    const valid = this.#d.validForMs()
    if (valid < MIN_PULL_MS + PULL_MARGIN_MS) return
    const window = this.#d.window()
    const free = window - this.#held.size - this.#queued.length - pulls.requested
    if (free <= 0) return
    // Small top-ups cost a request each; wait for a useful batch unless nothing is asked for.
    if (free < Math.max(1, Math.floor(window / 8)) && pulls.live > 0) return
    pulls.pull({ batch: free, expiresMs: Math.min(PULL_MAX_MS, valid - PULL_MARGIN_MS) })
  }

  async #sleep (ms: number): Promise<void> {
    await new Promise<void>((resolve) => {
      const done = (): void => { clearTimeout(t); this.#wakers.delete(done); resolve() }
      const t = setTimeout(done, ms)
      this.#wakers.add(done)
    })
  }

  /**
   * 'release': another instance is to own the partition. Stops pulling, waits until no pull of
   * this instance can still be served, lets held events finish within `graceMs`, hands back the
   * rest. 'lost': ownership is gone already; nothing more is sent, everything held not yet under
   * way is handed back at once.
   */
  async stop (mode: 'release' | 'lost', graceMs: number): Promise<void> {
    if (this.#stopping !== null) return
    this.#stopping = mode
    this.#pulls?.stop()
    if (this.#timer !== null) clearInterval(this.#timer)
    // Waits for a retry end now: the next attempt finds the partition no longer this instance's.
    for (const wake of [...this.#wakers]) wake()
    const deadline = Date.now() + (mode === 'lost' ? 0 : graceMs)
    if (mode === 'release') {
      // Until the last pull has expired on the server, it could still hand this instance an event
      // the next owner would not know of (the server's trip time is covered by the pull margin).
      const pullsGone = (this.#pulls?.allExpireAt ?? 0) + PULL_MARGIN_MS
      while ((Date.now() < pullsGone || this.#held.size > 0) && Date.now() < Math.max(deadline, pullsGone)) {
        await new Promise((resolve) => setTimeout(resolve, 50))
        // Keep what waits alive at the server meanwhile.
        const due = Date.now() - this.#d.ackWaitMs / 3
        for (const e of this.#held.values()) if (e.handle !== null && !e.acked && e.lastSignalAt < due) { e.handle.working(); e.lastSignalAt = Date.now() }
      }
    }
    for (const lane of this.#lanes.values()) {
      for (const e of lane.slice(1)) this.#handBack(e)
      lane.length = Math.min(lane.length, 1)
    }
    await Promise.allSettled([...this.#running])
    for (const e of this.#held.values()) this.#handBack(e)
    if (!this.#filling) for (const m of this.#queued.splice(0)) m.handle.nak()
    this.#pulls?.close()
  }
}
