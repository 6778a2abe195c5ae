import { setMaxListeners } from 'node:events'
import { jetstream, jetstreamManager, type ConsumerMessages, type JetStreamClient, type JetStreamManager, type JsMsg } from '@nats-io/jetstream'
import type { Subscription } from '@nats-io/transport-node'
import {
  EVENT_SIGNATURE_HEADER, ErrorCode, coalescerOf, createSigner, decodeEvent, ensureDlqStream, ensureEventStream, ensurePartitionConsumer,
  findCreatedId, isNotFound, isRegionsyncError, names, parseStreamSettings, regionLag, serverMaxPayload,
  type Logger, type Names, type RegionLag, type RegionsyncEvent, type Signer, type WriteCoalescer
} from '@regionsync/shared'
import { buildReplay, TargetClient, UndecryptableError, type Replay, type TargetSettings } from './applier.js'
import { CircuitBreaker, isTargetDown, type BreakerState } from './circuit-breaker.js'
import { gatherStatus, type RegionStatus } from './cluster-status.js'
import { isSuperseded, loadDeadLetter, publishDeadLetter, type DeadLetterReason } from './dead-letter.js'
import { AppliedLog } from './idempotency.js'
import { IdMap } from './id-map.js'
import { createReplicatorMetrics, type ReplicatorMetrics } from './metrics.js'
import { DEFAULT_LAG_CACHE_MS, parseReplicatorOptions, type ParsedReplicatorOptions, type ReplicatorOptions } from './options.js'
import { Semaphore, TokenBucket } from './rate-limit.js'
import { backoffMs, classify } from './retry-policy.js'

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
  /** Events applied per second over the last 10 seconds. */
  appliedPerSecond: number
  retries: number
  deadLetters: number
  breaker: BreakerState
  lastError: { at: string, message: string } | null
  startedAt: string
}

/** What to do with one event, whatever carried it (the stream, or a dead-letter replay). */
type Verdict =
  | { kind: 'done', outcome: 'applied' | 'already-applied' | 'own-origin' }
  | { kind: 'retry', delayMs: number, reason: string }
  | { kind: 'dead', reason: DeadLetterReason, detail: string, status: number | null, excerpt: string }

export interface DlqReplayResult {
  dlqSeq: number
  eventId: string | null
  outcome: 'applied' | 'already-applied' | 'superseded' | 'failed'
  detail: string
}

const RATE_WINDOW_S = 10

/**
 * Lifetime of each pull request. A pull waits on the consumer's leader; when that server dies, the
 * request dies with it and the client only notices after two missed heartbeats (half the expiry
 * each), so the expiry bounds how long a partition stalls after a cluster node is lost: the
 * client's 30 s default held partitions that long (test/faults/nats-cluster.test.ts).
 */
const PULL_EXPIRES_MS = 5000

/**
 * Messages each pull asks for. max_ack_pending 1 still lets the server hand out only one at a
 * time, so this buffers nothing; but a pull for one message ends with it, and the next event of
 * the partition then waits for a new pull to reach the server, costing a round trip and a pull
 * request for the server to process per event. A standing pull is answered the moment the ack
 * lands. The server moves a pull that is not yet filled to the back of its queue after each
 * message, so the instances of a region still take turns.
 */
const PULL_BATCH = 64

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
  readonly #breaker: CircuitBreaker
  readonly #bucket: TokenBucket | null
  #slots!: Semaphore
  readonly #startedAt = new Date()
  #js!: JetStreamClient
  readonly #writes: WriteCoalescer
  #jsm!: JetStreamManager
  #applied: AppliedLog | undefined
  #ids: IdMap | undefined
  #partitions = 0
  #keepAliveMs = 10_000
  #loops: Array<Promise<void>> = []
  #iterators: ConsumerMessages[] = []
  #subscriptions: Subscription[] = []
  /** Aborts every replay still in flight when the shutdown grace period ends. */
  readonly #shutdown = new AbortController()
  #started = false
  #connected = true
  #closing: Promise<void> | null = null
  #lagCache: { at: number, value: Promise<RegionLag> } | null = null
  #lastError: { at: string, message: string } | null = null
  #counts = { applied: 0, retries: 0, deadLetters: 0 }
  readonly #appliedRing = new Array<number>(RATE_WINDOW_S + 1).fill(0)
  #rateTimer: NodeJS.Timeout | null = null

  private constructor (o: ParsedReplicatorOptions) {
    // Every replay in flight listens on it.
    setMaxListeners(0, this.#shutdown.signal)
    this.#o = o
    this.#writes = coalescerOf(o.connection)
    this.region = o.region
    this.#log = o.logger.child({ region: o.region })
    this.#n = names(o.namespace)
    this.#signer = createSigner(o.signingKey)
    this.metrics = createReplicatorMetrics(o.region, async () => await this.lag(), o.registry)
    this.metrics.breakerOpen.set({ region: o.region }, 0)
    this.#target = {
      url: o.target,
      token: o.targetToken,
      timeoutMs: o.requestTimeoutMs,
      connections: o.connections ?? o.concurrency ?? 16,
      encryptionKey: o.encryptionKey
    }
    this.#client = new TargetClient(this.#target)
    this.#breaker = new CircuitBreaker(o.breaker, (state) => {
      this.metrics.breakerOpen.set({ region: this.region }, state === 'closed' ? 0 : 1)
      this.#log[state === 'closed' ? 'info' : 'warn']({ state }, 'target breaker changed')
    })
    this.#bucket = o.maxRps > 0 ? new TokenBucket(o.maxRps) : null
  }

  /** Sets up the stream, the region's consumers and records, then starts consuming. */
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
    const stream = await ensureEventStream(nc, this.#jsm, this.#n, settings)
    this.#partitions = stream.partitions
    this.#slots = new Semaphore(this.#o.concurrency ?? this.#partitions)
    // The stream's own replicas, not this process's setting: a replicator started without one
    // (the command has none) must not put its records on a single server of an R3 deployment.
    await ensureDlqStream(this.#jsm, this.#n, stream.replicas)
    this.#applied = await AppliedLog.open(nc, this.#n, this.region, settings.maxAgeMs, stream.replicas)
    this.#ids = await IdMap.open(nc, this.#n, this.region, stream.replicas)
    const consumers = await Promise.all(Array.from({ length: this.#partitions }, async (_, partition) =>
      await ensurePartitionConsumer(this.#jsm, this.#n, { region: this.region, partition, from: this.#o.from, ackWaitMs: this.#o.ackWaitMs })))
    this.#subscriptions.push(
      nc.subscribe(this.#n.statusSubject, { callback: (err, msg) => { if (err === null) this.status().then((s) => msg.respond(JSON.stringify(s)), () => {}) } }),
      nc.subscribe(this.#n.dlqReplaySubject(this.region), {
        queue: `${this.#n.namespace}_${this.region}`,
        callback: (err, msg) => {
          if (err !== null) return
          const { dlqSeq } = msg.json<{ dlqSeq: number }>()
          this.replayDeadLetter(dlqSeq).then((r) => msg.respond(JSON.stringify(r)),
            (e: Error) => msg.respond(JSON.stringify({ dlqSeq, eventId: null, outcome: 'failed', detail: e.message })))
        }
      })
    )
    // Signal progress well within the ack wait the consumers really have (another instance may have
    // created them with another one), or the server redelivers a long replay meanwhile.
    this.#keepAliveMs = Math.max(100, Math.min(...consumers.map((c) => c.ackWaitMs)) / 3)
    for (const { name } of consumers) {
      const consumer = await this.#js.consumers.get(this.#n.eventStream, name)
      const messages = await consumer.consume({ max_messages: PULL_BATCH, expires: PULL_EXPIRES_MS })
      this.#iterators.push(messages)
      this.#loops.push(this.#run(messages))
    }
    this.#rateTimer = setInterval(() => { this.#appliedRing.shift(); this.#appliedRing.push(this.#counts.applied) }, 1000)
    this.#rateTimer.unref()
    this.#started = true
    this.#log.info({ partitions: this.#partitions, target: this.#o.target.origin, instance: this.#o.instance }, 'replicator started')
  }

  get partitions (): number {
    return this.#partitions
  }

  /** What this instance has done since it started. */
  get counts (): Readonly<{ applied: number, retries: number, deadLetters: number }> {
    return { ...this.#counts }
  }

  get breaker (): BreakerState {
    return this.#breaker.state
  }

  /** True while connected and consuming; what /readyz reports. */
  get ready (): boolean {
    return this.#started && this.#closing === null && this.connected
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
    // A replay that waits (for a slot, the breaker or the target) must not look like a dead
    // worker to the server, or it redelivers meanwhile.
    const keepAlive = setInterval(() => m.working(), this.#keepAliveMs)
    keepAlive.unref()
    try {
      const verdict = await this.#evaluate(m.data, m.headers?.get(EVENT_SIGNATURE_HEADER), m.info.deliveryCount)
      switch (verdict.kind) {
        case 'done':
          this.#settle(m, () => m.ack())
          return
        case 'retry':
          this.#settle(m, () => m.nak(verdict.delayMs))
          return
        case 'dead':
          await publishDeadLetter(this.#js, this.#n, {
            v: 1,
            region: this.region,
            reason: verdict.reason,
            detail: verdict.detail,
            status: verdict.status,
            excerpt: verdict.excerpt,
            ...this.#eventFields(m.data),
            streamSeq: m.seq,
            subject: m.subject,
            failedAt: new Date().toISOString(),
            attempts: m.info.deliveryCount,
            payload: Buffer.from(m.data).toString('base64'),
            signature: m.headers?.get(EVENT_SIGNATURE_HEADER) ?? null
          }, serverMaxPayload(this.#o.connection))
          m.term()
          this.#counts.deadLetters++
          this.metrics.deadLetters.inc({ region: this.region, reason: verdict.reason })
          this.#log.error({ seq: m.seq, reason: verdict.reason, status: verdict.status, detail: verdict.detail }, 'event dead-lettered')
      }
    } catch (err) {
      // NATS itself failed us (KV or DLQ unreachable): hand the event back and try later.
      this.#noteError(err)
      this.#log.warn({ err, seq: m.seq }, 'event handling failed; will retry')
      this.#settle(m, () => m.nak(backoffMs(m.info.deliveryCount, this.#o.retry)))
    } finally {
      clearInterval(keepAlive)
    }
  }

  /** Acks or naks with the other writes of this turn; one lost with the connection is redelivered. */
  #settle (m: JsMsg, answer: () => void): void {
    this.#writes.defer(() => {
      try {
        answer()
      } catch (err) {
        this.#log.warn({ err, seq: m.seq }, 'could not answer the server for an event; it will be redelivered')
      }
    })
  }

  #eventFields (data: Uint8Array): { eventId: string | null, resource: string | null, method: string | null, path: string | null } {
    try {
      const e = decodeEvent(data)
      return { eventId: e.id, resource: e.resource, method: e.method, path: e.path }
    } catch {
      return { eventId: null, resource: null, method: null, path: null }
    }
  }

  /**
   * Decides and carries out what one event needs: verify, skip what this region must not or need
   * not apply, replay it, and record it as applied before the caller acknowledges it.
   */
  async #evaluate (data: Uint8Array, signature: string | undefined, attempt: number): Promise<Verdict> {
    let event: RegionsyncEvent
    try {
      event = decodeEvent(data)
    } catch (err) {
      return this.#dead('malformed', (err as Error).message)
    }
    try {
      this.#signer.verifyEvent(data, signature)
    } catch (err) {
      return this.#dead('bad-signature', (err as Error).message)
    }
    if (event.origin === this.region) {
      this.metrics.skipped.inc({ region: this.region, reason: 'own-origin' })
      return { kind: 'done', outcome: 'own-origin' }
    }
    if (await (this.#applied as AppliedLog).has(event.id)) {
      this.metrics.skipped.inc({ region: this.region, reason: 'already-applied' })
      return { kind: 'done', outcome: 'already-applied' }
    }
    let replay: Replay
    try {
      const path = await (this.#ids as IdMap).translatePath(event.path, event.idSegments)
      replay = buildReplay(path === event.path ? event : { ...event, path }, this.#target, this.#signer)
    } catch (err) {
      if (isRegionsyncError(err, ErrorCode.BadPath)) return this.#dead('bad-path', err.message)
      if (err instanceof UndecryptableError || isRegionsyncError(err, ErrorCode.MalformedEvent)) return this.#dead('undecryptable', (err as Error).message)
      throw err
    }
    const learnId = event.created?.mode === 'translate'
    const sent = await this.#send(replay, attempt, learnId)
    const outcome = sent.status === null
      ? { kind: 'retry' as const, delayMs: sent.aborted ? 0 : backoffMs(attempt, this.#o.retry), reason: sent.reason }
      : classify(replay.method, sent.status, sent.headers, attempt, this.#o.retry, this.#o.alreadyApplied)
    if (outcome.kind === 'retry' && isTargetDown(sent.status)) this.#breaker.failure()
    else if (outcome.kind === 'applied' || outcome.kind === 'already-applied') this.#breaker.success()
    else this.#breaker.neutral()
    switch (outcome.kind) {
      case 'applied':
      case 'already-applied':
        if (learnId && outcome.kind === 'applied' && event.created !== null) {
          const assigned = findCreatedId(sent.json, event.created.field, false)
          if (assigned !== null && assigned.id !== event.created.id) await (this.#ids as IdMap).put(event.created.id, assigned.id)
        }
        await this.#recordApplied(event.id, outcome.status)
        this.#counts.applied++
        this.metrics.applied.inc({ region: this.region })
        this.metrics.endToEndSeconds.observe({ region: this.region }, Math.max(0, Date.now() - Date.parse(event.committedAt)) / 1000)
        return { kind: 'done', outcome: outcome.kind }
      case 'retry':
        if (this.#o.retry.maxAttempts > 0 && attempt >= this.#o.retry.maxAttempts) {
          return this.#dead('too-many-attempts', `${outcome.reason} after ${attempt} attempts`)
        }
        this.#counts.retries++
        this.metrics.retries.inc({ region: this.region })
        this.#noteError(new Error(outcome.reason))
        this.#log.warn({ eventId: event.id, attempt, delayMs: outcome.delayMs, reason: outcome.reason }, 'replay failed; retrying')
        return outcome
      case 'reject':
        return this.#dead('rejected', outcome.reason, outcome.status, sent.excerpt)
    }
  }

  /**
   * The target has the write: until the record holds, a redelivery would replay it (harmless on a
   * target with the plugin, a second write on one without). While JetStream is unreachable the ack
   * could not land either, so keep trying; on close, give up and let the redelivery be deduplicated.
   */
  async #recordApplied (eventId: string, status: number): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        await (this.#applied as AppliedLog).record(eventId, status)
        return
      } catch (err) {
        if (this.#closing !== null) throw err
        if (attempt === 1) this.#log.warn({ err, eventId }, 'could not record an applied event yet; retrying')
        await new Promise((resolve) => setTimeout(resolve, Math.min(5000, 250 * attempt)))
      }
    }
  }

  #dead (reason: DeadLetterReason, detail: string, status: number | null = null, excerpt = ''): Verdict {
    this.#noteError(new Error(`${reason}: ${detail}`))
    return { kind: 'dead', reason, detail, status, excerpt }
  }

  async #send (replay: Replay, attempt: number, readJson: boolean): Promise<{
    status: number | null, headers: Record<string, string | string[] | undefined>, excerpt: string, json?: unknown, reason: string, aborted: boolean
  }> {
    const abort = this.#shutdown.signal
    const release = await this.#slots.acquire()
    try {
      await this.#breaker.acquire(abort)
      if (this.#bucket !== null) await this.#bucket.take()
      const timer = this.metrics.applySeconds.startTimer({ region: this.region })
      try {
        const res = await this.#client.send(replay, abort, readJson)
        return { ...res, reason: `target answered ${res.status}`, aborted: false }
      } finally {
        timer()
      }
    } catch (err) {
      const code = (err as { code?: string }).code
      return { status: null, headers: {}, excerpt: '', reason: `request failed (attempt ${attempt}): ${code ?? (err as Error).message}`, aborted: abort.aborted }
    } finally {
      release()
    }
  }

  /**
   * Replays one dead letter of this region (`regionsync dlq replay`): through the same checks and
   * records as any event, unless a newer event for the same resource has been handled since, which
   * it would overwrite. An applied letter leaves the dead-letter stream.
   */
  async replayDeadLetter (dlqSeq: number): Promise<DlqReplayResult> {
    const letter = await loadDeadLetter(this.#jsm, this.#n, dlqSeq)
    if (letter === null || letter.region !== this.region) {
      return { dlqSeq, eventId: null, outcome: 'failed', detail: `no dead letter ${dlqSeq} for region ${this.region}` }
    }
    const base = { dlqSeq, eventId: letter.eventId }
    if (letter.resource !== null && await isSuperseded(this.#jsm, this.#n, letter)) {
      return { ...base, outcome: 'superseded', detail: `a newer event for ${letter.resource} has been handled since; replaying would overwrite it` }
    }
    const event = letter.payload !== null
      ? { data: Buffer.from(letter.payload, 'base64'), signature: letter.signature ?? undefined }
      : await this.#storedEvent(letter.streamSeq)
    if (event === null) return { ...base, outcome: 'failed', detail: `event ${letter.streamSeq} is no longer in the event stream` }
    const verdict = await this.#evaluate(event.data, event.signature, 1)
    if (verdict.kind === 'done') {
      await this.#jsm.streams.deleteMessage(this.#n.dlqStream, dlqSeq)
      return { ...base, outcome: verdict.outcome === 'already-applied' ? 'already-applied' : 'applied', detail: '' }
    }
    return { ...base, outcome: 'failed', detail: verdict.kind === 'dead' ? `${verdict.reason}: ${verdict.detail}` : verdict.reason }
  }

  /** An event as the stream holds it, for a letter too large to have carried it; null when it is gone. */
  async #storedEvent (seq: number): Promise<{ data: Uint8Array, signature: string | undefined } | null> {
    try {
      const m = await this.#jsm.streams.getMessage(this.#n.eventStream, { seq })
      return m === null ? null : { data: m.data, signature: m.header?.get(EVENT_SIGNATURE_HEADER) || undefined }
    } catch (err) {
      if (isNotFound(err)) return null
      throw err
    }
  }

  /** Every region's status, as `regionsync status` shows it; for the dashboard. */
  async clusterStatus (waitMs?: number): Promise<RegionStatus[]> {
    return await gatherStatus(this.#o.connection, this.#n, waitMs)
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
      appliedPerSecond: (this.#counts.applied - (this.#appliedRing[0] as number)) / RATE_WINDOW_S,
      retries: this.#counts.retries,
      deadLetters: this.#counts.deadLetters,
      breaker: this.#breaker.state,
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
    for (const s of this.#subscriptions) s.unsubscribe()
    for (const it of this.#iterators) {
      try { it.stop() } catch (err) { this.#log.warn({ err }, 'stopping a consumer failed') }
    }
    if (this.#rateTimer !== null) clearInterval(this.#rateTimer)
    const grace = setTimeout(() => {
      this.#shutdown.abort()
      this.#breaker.close()
    }, this.#o.shutdownGraceMs)
    await Promise.allSettled(this.#loops)
    clearTimeout(grace)
    this.#breaker.close()
    this.#applied?.close()
    this.#ids?.close()
    try { await this.#client.close() } catch (err) { this.#log.warn({ err }, 'closing the target pool failed') }
    if (this.#o.ownsConnection && !this.#o.connection.isClosed()) {
      try { await this.#o.connection.drain() } catch (err) { this.#log.warn({ err }, 'draining NATS failed') }
    }
    this.#log.info({ applied: this.#counts.applied }, 'replicator stopped')
  }
}
