import type { NatsConnection } from '@nats-io/transport-node'
import { InboxClient, EVENT_SIGNATURE_HEADER } from '@regionsync/shared'
import type { FastifyBaseLogger } from 'fastify'
import { PublishError } from './errors.js'
import type { PublisherMetrics } from './metrics.js'
import type { Spool, SpooledEvent } from './spool.js'

export const DRAIN_RETRY_MS = 1000
/** Spooled events read at a time, and published at once while draining. */
const DRAIN_BATCH = 256
const DRAIN_WINDOW = 64

export interface EventPublisherSettings {
  region: string
  publishTimeoutMs: number
  maxInFlight: number
  /** When the spool is full: refuse writes (503) or let them through unreplicated. */
  whenSpoolFull: 'reject' | 'allow-unreplicated'
}

/** Why a write may not start. */
export type Refusal = 'spool-full' | 'too-many-in-flight'

/** A write's claim on the publisher, taken before its handler runs and released once. */
export interface Admission {
  /** The write will not be replicated (spool full, operator chose to let it through). */
  unreplicated: boolean
  release: () => void
}

/** Where an event without a subject goes: its partition's subject, once the partition count is known. */
export type SubjectOf = (key: string) => string

/**
 * Gets every event into JetStream, in order, without losing one (I1). While JetStream answers and
 * nothing is spooled, an event is published and its ack awaited before the 2xx. When JetStream is
 * unreachable or slow, or anything is already spooled (so a newer event never overtakes an older
 * one), the event goes to the spool, durable on disk before the 2xx, and a drain loop publishes the
 * spool oldest first, with the same Nats-Msg-Id, as soon as NATS is back. Created without a
 * connection (the plugin registered while NATS was unreachable), it spools everything until
 * `attach()` gives it one.
 */
export class EventPublisher {
  readonly #s: EventPublisherSettings
  #acks: InboxClient | null = null
  #subjectOf: SubjectOf | null = null
  readonly #spool: Spool | null
  readonly #metrics: PublisherMetrics
  readonly #log: FastifyBaseLogger
  #connected = false
  #inFlight = 0
  #draining: Promise<void> | null = null
  #drainTimer: NodeJS.Timeout | null = null
  #closed = false

  constructor (s: EventPublisherSettings, spool: Spool | null, metrics: PublisherMetrics, log: FastifyBaseLogger) {
    this.#s = s
    this.#spool = spool
    this.#metrics = metrics
    this.#log = log
    metrics.spoolEvents.set({ region: s.region }, spool?.size ?? 0)
  }

  /** Starts publishing on `nc`: the spool first, oldest first. */
  attach (nc: NatsConnection, subjectOf: SubjectOf): void {
    this.#acks = new InboxClient(nc)
    this.#subjectOf = subjectOf
    this.#connected = !nc.isClosed()
    this.#watchConnection(nc).catch((err) => this.#log.warn({ err }, 'regionsync NATS status watch ended'))
    if (this.#spool !== null && !this.#spool.isEmpty) {
      this.#log.info({ spooled: this.#spool.size }, 'regionsync draining the spool')
      this.kick()
    }
  }

  get spooled (): number {
    return this.#spool?.size ?? 0
  }

  async #watchConnection (nc: NatsConnection): Promise<void> {
    for await (const s of nc.status()) {
      if (s.type === 'disconnect') {
        this.#connected = false
        this.#log.warn({ server: s.server }, 'regionsync lost NATS; spooling writes')
      } else if (s.type === 'reconnect') {
        this.#connected = true
        this.#log.info({ server: s.server, spooled: this.spooled }, 'regionsync reconnected to NATS')
        this.kick()
      }
    }
  }

  /**
   * Admits a write before its handler runs, or says why not: so the source never commits a write
   * it has no way to replicate.
   */
  admit (): Admission | Refusal {
    if (this.#inFlight >= this.#s.maxInFlight) {
      this.#metrics.refused.inc({ region: this.#s.region, reason: 'too-many-in-flight' })
      return 'too-many-in-flight'
    }
    let reserved = false
    let unreplicated = false
    if (this.#spool !== null) {
      reserved = this.#spool.reserve()
      if (!reserved) {
        if (this.#s.whenSpoolFull === 'reject') {
          this.#metrics.refused.inc({ region: this.#s.region, reason: 'spool-full' })
          this.#log.error({ spooled: this.#spool.size, maxEvents: this.#spool.maxEvents }, 'regionsync spool is full; refusing writes')
          return 'spool-full'
        }
        unreplicated = true
      }
    }
    this.#inFlight++
    let released = false
    return {
      unreplicated,
      release: () => {
        if (released) return
        released = true
        this.#inFlight--
        if (reserved) this.#spool?.release()
      }
    }
  }

  /** Resolves once the event is acknowledged by JetStream or durable in the spool. */
  async submit (event: SpooledEvent): Promise<'published' | 'spooled'> {
    if (this.#closed) throw new PublishError('regionsync is closing')
    if (this.#spool === null || (this.#spool.isEmpty && this.#draining === null && this.#connected && this.#acks !== null)) {
      try {
        await this.#publish(event)
        return 'published'
      } catch (err) {
        this.#metrics.publishFailures.inc({ region: this.#s.region })
        if (this.#spool === null) throw err
        this.#log.warn({ err, msgId: event.msgId }, 'regionsync publish failed; spooling')
      }
    }
    await this.#spool.append(event)
    this.#metrics.spooled.inc({ region: this.#s.region })
    this.#metrics.spoolEvents.set({ region: this.#s.region }, this.#spool.size)
    this.kick()
    return 'spooled'
  }

  async #publish (event: SpooledEvent): Promise<void> {
    const acks = this.#acks
    const subjectOf = this.#subjectOf
    if (acks === null || subjectOf === null) throw new PublishError('regionsync has not reached NATS yet')
    const started = process.hrtime.bigint()
    try {
      await acks.publish(event.subject ?? subjectOf(event.key), event.data, {
        msgId: event.msgId,
        timeoutMs: this.#s.publishTimeoutMs,
        headers: { [EVENT_SIGNATURE_HEADER]: event.signature }
      })
    } catch (err) {
      throw new PublishError('JetStream did not acknowledge the event', { cause: err })
    }
    this.#metrics.ackSeconds.observe({ region: this.#s.region }, Number(process.hrtime.bigint() - started) / 1e9)
    this.#metrics.published.inc({ region: this.#s.region })
  }

  /** Starts the drain loop if there is anything to drain and it is not running. */
  kick (): void {
    if (this.#spool === null || this.#closed || this.#acks === null || this.#draining !== null || this.#spool.isEmpty) return
    this.#draining = this.#drain().finally(() => {
      this.#draining = null
      if (this.#spool !== null && !this.#spool.isEmpty && !this.#closed && this.#drainTimer === null) {
        this.#drainTimer = setTimeout(() => { this.#drainTimer = null; this.kick() }, DRAIN_RETRY_MS)
        this.#drainTimer.unref()
      }
    })
  }

  /**
   * Publishes the spool oldest first: an event leaves the spool only after JetStream acknowledged
   * it. Up to DRAIN_WINDOW publishes are out at once, so a NATS a round trip away drains at the
   * window's pace, not one event per round trip (at 80 ms, 12 a second: less than many APIs write,
   * so a spool would never empty). Events of one resource key go one after another in spool order;
   * a failure starts nothing more, so nothing of its key goes ahead of it.
   */
  async #drain (): Promise<void> {
    const spool = this.#spool as Spool
    while (!this.#closed && !spool.isEmpty) {
      const batch = spool.oldest(DRAIN_BATCH)
      // Counted but not readable yet: an append still committing. Looping on would never yield to
      // let it finish (the process hung, measured); its submit() kicks the drain once it is on disk.
      if (batch.length === 0) return
      const failure = await this.#publishInOrder(batch)
      if (failure !== null) {
        this.#log.warn({ err: failure, spooled: spool.size }, 'regionsync spool drain paused')
        return
      }
    }
    if (spool.isEmpty) this.#log.info('regionsync spool drained')
  }

  /** Publishes `batch` (oldest first) and removes each acknowledged event; the first failure, or null. */
  async #publishInOrder (batch: Array<{ key: number, event: SpooledEvent }>): Promise<unknown> {
    const spool = this.#spool as Spool
    const waiting = [...batch]
    const busy = new Set<string>()
    const running = new Set<Promise<void>>()
    let failure: unknown = null
    while (waiting.length > 0 || running.size > 0) {
      for (let i = 0; i < waiting.length && running.size < DRAIN_WINDOW && failure === null && !this.#closed;) {
        const { key, event } = waiting[i] as { key: number, event: SpooledEvent }
        // An earlier event of this resource is still out: this one, and its later ones, wait.
        if (busy.has(event.key)) { i++; continue }
        waiting.splice(i, 1)
        busy.add(event.key)
        const p: Promise<void> = this.#publish(event)
          .then(async () => {
            await spool.remove(key)
            this.#metrics.spoolEvents.set({ region: this.#s.region }, spool.size)
          })
          .catch((err: unknown) => { failure ??= err })
          .finally(() => { busy.delete(event.key); running.delete(p) })
        running.add(p)
      }
      if (running.size === 0) break
      await Promise.race(running)
    }
    return failure
  }

  /** Stops draining; what is left stays in the spool for the next start. */
  async close (): Promise<void> {
    this.#closed = true
    if (this.#drainTimer !== null) clearTimeout(this.#drainTimer)
    await this.#draining
    this.#acks?.close()
    await this.#spool?.close()
  }
}
