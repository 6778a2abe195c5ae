import { jetstream, jetstreamManager, type ConsumerMessages, type JetStreamClient, type JetStreamManager, type JsMsg } from '@nats-io/jetstream'
import {
  EVENT_SIGNATURE_HEADER, createSigner, decodeEvent, ensureDlqStream, ensureEventStream, ensurePartitionConsumer, isRegionsyncError,
  names, parseStreamSettings, regionLag, ErrorCode, type Logger, type Names, type RegionLag, type RegionsyncEvent, type Signer
} from '@regionsync/shared'
import { buildReplay, TargetClient, UndecryptableError, type Replay, type TargetSettings } from './applier.js'
import { publishDeadLetter, type DeadLetterReason } from './dead-letter.js'
import { AppliedLog } from './idempotency.js'
import { createReplicatorMetrics, type ReplicatorMetrics } from './metrics.js'
import { DEFAULT_LAG_CACHE_MS, parseReplicatorOptions, type ParsedReplicatorOptions, type ReplicatorOptions } from './options.js'
import { backoffMs, classify, type Outcome } from './retry-policy.js'

export interface ReplicatorStatus {
  region: string
  instance: string
  /** The target's origin; never its credential. */
  target: string
  connected: boolean
  ready: boolean
  partitions: number
  pending: number
  lagSeconds: number
  oldestPendingAt: string | null
  applied: number
  retries: number
  deadLetters: number
  lastError: { at: string, message: string } | null
  startedAt: string
}

/**
 * Applies one region's events to its target. Every instance of a region consumes the same durable
 * consumers, one per partition, so the region's instances form one queue group and each
 * partition (each resource) is applied in order (I3).
 */
export class Replicator {
  readonly region: string
  readonly metrics: ReplicatorMetrics
  readonly #o: ParsedReplicatorOptions
  readonly #log: Logger
  readonly #n: Names
  readonly #signer: Signer
  readonly #client: TargetClient
  readonly #target: TargetSettings
  readonly #startedAt = new Date()
  #js!: JetStreamClient
  #jsm!: JetStreamManager
  #applied!: AppliedLog
  #partitions = 0
  #loops: Array<Promise<void>> = []
  #iterators: ConsumerMessages[] = []
  readonly #inflight = new Set<AbortController>()
  #started = false
  #connected = true
  #closing: Promise<void> | null = null
  #lagCache: { at: number, value: Promise<RegionLag> } | null = null
  #lastError: { at: string, message: string } | null = null
  #counts = { applied: 0, retries: 0, deadLetters: 0 }

  private constructor (o: ParsedReplicatorOptions) {
    this.#o = o
    this.region = o.region
    this.#log = o.logger.child({ region: o.region })
    this.#n = names(o.namespace)
    this.#signer = createSigner(o.signingKey)
    this.metrics = createReplicatorMetrics(o.region, async () => await this.lag(), o.registry)
    this.#target = {
      url: o.target,
      token: o.targetToken,
      timeoutMs: o.requestTimeoutMs,
      connections: o.connections ?? 16,
      encryptionKey: o.encryptionKey
    }
    this.#client = new TargetClient(this.#target)
  }

  /** Sets up the stream, the region's consumers and its applied-log, then starts consuming. */
  static async start (options: ReplicatorOptions): Promise<Replicator> {
    const r = new Replicator(parseReplicatorOptions(options))
    try {
      await r.#setup()
    } catch (err) {
      await r.close()
      throw err
    }
    return r
  }

  async #setup (): Promise<void> {
    const nc = this.#o.connection
    this.#watchConnection().catch((err) => this.#log.warn({ err }, 'NATS status watch ended'))
    this.#jsm = await jetstreamManager(nc)
    this.#js = jetstream(nc)
    const settings = parseStreamSettings(this.#o.stream)
    this.#partitions = (await ensureEventStream(nc, this.#jsm, this.#n, settings)).partitions
    await ensureDlqStream(this.#jsm, this.#n, settings.replicas)
    this.#applied = await AppliedLog.open(nc, this.#n, this.region, settings.maxAgeMs, settings.replicas)
    const consumers = await Promise.all(Array.from({ length: this.#partitions }, async (_, partition) =>
      await ensurePartitionConsumer(this.#jsm, this.#n, { region: this.region, partition, from: this.#o.from, ackWaitMs: this.#o.ackWaitMs })))
    for (const name of consumers) {
      const consumer = await this.#js.consumers.get(this.#n.eventStream, name)
      const messages = await consumer.consume({ max_messages: 1, expires: 30_000 })
      this.#iterators.push(messages)
      this.#loops.push(this.#run(messages))
    }
    this.#started = true
    this.#log.info({ partitions: this.#partitions, target: this.#o.target.origin, instance: this.#o.instance }, 'replicator started')
  }

  /** What this instance has done since it started. */
  get counts (): Readonly<{ applied: number, retries: number, deadLetters: number }> {
    return { ...this.#counts }
  }

  get partitions (): number {
    return this.#partitions
  }

  /** True while connected and consuming; what /readyz reports. */
  get ready (): boolean {
    return this.#started && this.#closing === null && this.#connected && !this.#o.connection.isClosed()
  }

  get connected (): boolean {
    return this.#connected && !this.#o.connection.isClosed()
  }

  async #watchConnection (): Promise<void> {
    for await (const s of this.#o.connection.status()) {
      if (s.type === 'disconnect') {
        this.#connected = false
        this.#log.warn({ server: s.server }, 'disconnected from NATS')
      } else if (s.type === 'reconnect') {
        this.#connected = true
        this.#log.info({ server: s.server }, 'reconnected to NATS')
      }
    }
  }

  async #run (messages: ConsumerMessages): Promise<void> {
    for await (const m of messages) {
      await this.#handle(m)
    }
  }

  async #handle (m: JsMsg): Promise<void> {
    try {
      await this.#process(m)
    } catch (err) {
      // NATS itself failed us (KV or DLQ unreachable): hand the event back and try later.
      this.#noteError(err)
      this.#log.warn({ err, seq: m.seq }, 'event handling failed; will retry')
      m.nak(backoffMs(m.info.deliveryCount, this.#o.retry))
    }
  }

  async #process (m: JsMsg): Promise<void> {
    let event: RegionsyncEvent
    try {
      event = decodeEvent(m.data)
    } catch (err) {
      return await this.#deadLetter(m, null, 'malformed', (err as Error).message)
    }
    try {
      this.#signer.verifyEvent(m.data, m.headers?.get(EVENT_SIGNATURE_HEADER))
    } catch (err) {
      return await this.#deadLetter(m, event, 'bad-signature', (err as Error).message)
    }
    if (event.origin === this.region) {
      this.metrics.skipped.inc({ region: this.region, reason: 'own-origin' })
      return m.ack()
    }
    if (await this.#applied.has(event.id)) {
      this.metrics.skipped.inc({ region: this.region, reason: 'already-applied' })
      return m.ack()
    }
    let replay: Replay
    try {
      replay = buildReplay(event, this.#target, this.#signer)
    } catch (err) {
      if (isRegionsyncError(err, ErrorCode.BadPath)) return await this.#deadLetter(m, event, 'bad-path', err.message)
      if (err instanceof UndecryptableError || isRegionsyncError(err, ErrorCode.MalformedEvent)) {
        return await this.#deadLetter(m, event, 'undecryptable', (err as Error).message)
      }
      throw err
    }
    const attempt = m.info.deliveryCount
    const outcome = await this.#send(m, replay, attempt)
    switch (outcome.kind) {
      case 'applied':
      case 'already-applied':
        await this.#applied.record(event.id, outcome.status)
        m.ack()
        this.#counts.applied++
        this.metrics.applied.inc({ region: this.region })
        this.metrics.endToEndSeconds.observe({ region: this.region }, Math.max(0, Date.now() - Date.parse(event.committedAt)) / 1000)
        return
      case 'retry':
        if (this.#o.retry.maxAttempts > 0 && attempt >= this.#o.retry.maxAttempts) {
          return await this.#deadLetter(m, event, 'too-many-attempts', `${outcome.reason} after ${attempt} attempts`)
        }
        this.#counts.retries++
        this.metrics.retries.inc({ region: this.region })
        this.#noteError(new Error(outcome.reason))
        this.#log.warn({ eventId: event.id, attempt, delayMs: outcome.delayMs, reason: outcome.reason }, 'replay failed; retrying')
        return m.nak(outcome.delayMs)
      case 'reject':
        return await this.#deadLetter(m, event, 'rejected', outcome.reason, outcome.status, outcome.excerpt)
    }
  }

  async #send (m: JsMsg, replay: Replay, attempt: number): Promise<Outcome & { excerpt?: string }> {
    const abort = new AbortController()
    this.#inflight.add(abort)
    // A long request must not look like a dead worker to the server, or it redelivers meanwhile.
    const keepAlive = setInterval(() => m.working(), Math.max(500, this.#o.ackWaitMs / 3))
    keepAlive.unref()
    const timer = this.metrics.applySeconds.startTimer({ region: this.region })
    try {
      const res = await this.#client.send(replay, abort.signal)
      const outcome = classify(replay.method, res.status, res.headers, attempt, this.#o.retry, this.#o.alreadyApplied)
      return outcome.kind === 'reject' ? { ...outcome, excerpt: res.excerpt } : outcome
    } catch (err) {
      const code = (err as { code?: string }).code
      return { kind: 'retry', delayMs: abort.signal.aborted ? 0 : backoffMs(attempt, this.#o.retry), reason: `request failed: ${code ?? (err as Error).message}` }
    } finally {
      timer()
      clearInterval(keepAlive)
      this.#inflight.delete(abort)
    }
  }

  async #deadLetter (m: JsMsg, event: RegionsyncEvent | null, reason: DeadLetterReason, detail: string, status: number | null = null, excerpt = ''): Promise<void> {
    await publishDeadLetter(this.#js, this.#n, {
      v: 1,
      region: this.region,
      reason,
      detail,
      status,
      excerpt,
      eventId: event?.id ?? null,
      resource: event?.resource ?? null,
      method: event?.method ?? null,
      path: event?.path ?? null,
      streamSeq: m.seq,
      subject: m.subject,
      failedAt: new Date().toISOString(),
      attempts: m.info.deliveryCount,
      payload: Buffer.from(m.data).toString('base64'),
      signature: m.headers?.get(EVENT_SIGNATURE_HEADER) ?? null
    })
    m.term()
    this.#counts.deadLetters++
    this.metrics.deadLetters.inc({ region: this.region, reason })
    this.#noteError(new Error(`${reason}: ${detail}`))
    this.#log.error({ eventId: event?.id, seq: m.seq, reason, status, detail }, 'event dead-lettered')
  }

  #noteError (err: unknown): void {
    this.#lastError = { at: new Date().toISOString(), message: err instanceof Error ? err.message : String(err) }
  }

  /** The region's exact lag from JetStream, cached briefly so scrapes and status share one read. */
  async lag (): Promise<RegionLag> {
    const now = Date.now()
    if (this.#lagCache === null || now - this.#lagCache.at > DEFAULT_LAG_CACHE_MS) {
      const value = regionLag(this.#jsm, this.#n, this.region, this.#partitions)
      value.catch(() => { this.#lagCache = null })
      this.#lagCache = { at: now, value }
    }
    return await this.#lagCache.value
  }

  async status (): Promise<ReplicatorStatus> {
    const lag = await this.lag()
    return {
      region: this.region,
      instance: this.#o.instance,
      target: this.#o.target.origin,
      connected: this.connected,
      ready: this.ready,
      partitions: this.#partitions,
      pending: lag.pending,
      lagSeconds: lag.lagSeconds,
      oldestPendingAt: lag.oldestPendingAt?.toISOString() ?? null,
      applied: this.#counts.applied,
      retries: this.#counts.retries,
      deadLetters: this.#counts.deadLetters,
      lastError: this.#lastError,
      startedAt: this.#startedAt.toISOString()
    }
  }

  /**
   * Stops pulling, lets in-flight replays finish within the grace period (then aborts them and
   * hands their events back for immediate redelivery), closes the target pool and, when it owns
   * the connection, drains NATS. Every call returns the same promise.
   */
  close (): Promise<void> {
    this.#closing ??= this.#close()
    return this.#closing
  }

  async #close (): Promise<void> {
    for (const it of this.#iterators) {
      try { it.stop() } catch (err) { this.#log.warn({ err }, 'stopping a consumer failed') }
    }
    const grace = setTimeout(() => { for (const a of this.#inflight) a.abort() }, this.#o.shutdownGraceMs)
    await Promise.allSettled(this.#loops)
    clearTimeout(grace)
    try { await this.#client.close() } catch (err) { this.#log.warn({ err }, 'closing the target pool failed') }
    if (this.#o.ownsConnection && !this.#o.connection.isClosed()) {
      try { await this.#o.connection.drain() } catch (err) { this.#log.warn({ err }, 'draining NATS failed') }
    }
    this.#log.info({ applied: this.#counts.applied }, 'replicator stopped')
  }
}
