import { setMaxListeners } from 'node:events'
import { jetstream, jetstreamManager, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream'
import type { Status, Subscription } from '@nats-io/transport-node'
import {
  EVENT_SIGNATURE_HEADER, ErrorCode, coalescerOf, errorCodeOf, createSigner, decodeEvent, ensureDlqStream, ensureEventStream, ensurePartitionConsumer,
  isNotFound, isRegionsyncError, loadOtel, names, parseStreamSettings, readSubjectRange, regionLag, retryUntil, serverMaxPayload,
  type Logger, type Names, type RegionLag, type RegionsyncEvent, type Signer, type WriteCoalescer
} from '@regionsync/shared'
import { buildReplay, TargetClient, type Replay, type TargetSettings } from './applier.js'
import { CircuitBreaker, isTargetDown, type BreakerState } from './circuit-breaker.js'
import { gatherStatus, type RegionStatus, type ReplicatorStatus } from './cluster-status.js'
import { isSuperseded, loadDeadLetter, publishDeadLetter } from './dead-letter.js'
import { REPLAY_OUTCOME_HEADER, admit, dead, judge, type DeadVerdict, type Sent, type Verdict } from './event-verdict.js'
import { AppliedLog } from './idempotency.js'
import { IdentityResolver } from './identity.js'
import { createReplicatorMetrics, type ReplicatorMetrics } from './metrics.js'
import { DEFAULT_LAG_CACHE_MS, parseReplicatorOptions, type ParsedReplicatorOptions, type ReplicatorOptions } from './options.js'
import { PartitionOwnership } from './ownership.js'
import { PartitionWorker, type Entry, type Step, type StoredEvent } from './partition-worker.js'
import { PullStream } from './pull-stream.js'
import { Semaphore } from './semaphore.js'
import { TokenBucket } from './token-bucket.js'
import { ReplayTracing } from './replay-tracing.js'

export interface DlqReplayResult {
  dlqSeq: number
  eventId: string | null
  outcome: 'applied' | 'already-applied' | 'superseded' | 'failed'
  detail: string
}

const RATE_WINDOW_S = 10

/**
 * Events an instance holds at most per replay it may have in flight (`--concurrency`), over all
 * its partitions. Measured with 16 replays in flight and 5,000 events waiting (`npm run bench --
 * --quick --only memory`): peak RSS 174 MB holding 1,024 events, 123 MB holding 64, at the same
 * throughput. At the default concurrency (256) it leaves the default window (64 x 16) as it is.
 */
const HELD_PER_REPLAY = 4

const OWNERSHIP_MODE = 'lease (JetStream KV, compare-and-set, renewed) with sequence fencing at the target'

/**
 * Applies one region's events to its target. The region's instances share one durable consumer
 * per partition; each partition is owned by one instance at a time (ownership.ts), which keeps
 * many of its events in flight, one lane per resource (partition-worker.ts). So resources stay in
 * order (I3) while the region's rate is bound by its target and its CPU, not by round trips.
 */
export class Replicator {
  readonly region: string
  readonly metrics: ReplicatorMetrics
  readonly #o: ParsedReplicatorOptions
  readonly #log: Logger
  readonly #n: Names
  readonly #signer: Signer
  #tracing = new ReplayTracing(null, '')
  readonly #client: TargetClient
  readonly #target: TargetSettings
  readonly #breaker: CircuitBreaker
  readonly #bucket: TokenBucket | null
  readonly #slots: Semaphore
  readonly #startedAt = new Date()
  #js!: JetStreamClient
  readonly #writes: WriteCoalescer
  #jsm!: JetStreamManager
  #applied: AppliedLog | undefined
  #ids: IdentityResolver | undefined
  #ownership: PartitionOwnership | undefined
  readonly #workers = new Map<number, PartitionWorker>()
  /** An event's final verdict, from its last attempt to its settlement. */
  readonly #verdicts = new Map<Entry, Verdict>()
  #partitions = 0
  #ackWaitMs = 0
  #subscriptions: Subscription[] = []
  /** The connection's status events, watched until close (the connection may outlive this replicator). */
  #statuses: (AsyncIterable<Status> & { stop?: () => void }) | null = null
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
      connections: o.connections ?? o.concurrency,
      encryptionKey: o.encryptionKey
    }
    this.#client = new TargetClient(this.#target)
    this.#breaker = new CircuitBreaker(o.breaker, (state) => {
      this.metrics.breakerOpen.set({ region: this.region }, state === 'closed' ? 0 : 1)
      this.#log[state === 'closed' ? 'info' : 'warn']({ state }, 'target breaker changed')
    })
    this.#bucket = o.maxRps > 0 ? new TokenBucket(o.maxRps) : null
    this.#slots = new Semaphore(o.concurrency)
  }

  /** Sets up the stream, the region's consumers and records, then starts taking its share of the partitions. */
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
    this.#tracing = new ReplayTracing(await loadOtel(), this.region)
    this.#watchConnection().catch((err) => this.#log.warn({ err }, 'NATS status watch ended'))
    this.#jsm = await jetstreamManager(nc)
    this.#js = jetstream(nc)
    const settings = parseStreamSettings(this.#o.stream)
    const stream = await ensureEventStream(nc, this.#jsm, this.#n, settings)
    this.#partitions = stream.partitions
    // The stream's own replicas, not this process's setting: a replicator started without one
    // (the command has none) must not put its records on a single server of an R3 deployment.
    await ensureDlqStream(this.#jsm, this.#n, stream.replicas)
    this.#applied = await AppliedLog.open(nc, this.#n, this.region, settings.maxAgeMs, stream.replicas)
    this.#ids = await IdentityResolver.open(nc, this.#n, this.region, { replicas: stream.replicas, logger: this.#log })
    const consumers = await Promise.all(Array.from({ length: this.#partitions }, async (_, partition) =>
      await ensurePartitionConsumer(this.#jsm, this.#n, { region: this.region, partition, from: this.#o.from, ackWaitMs: this.#o.ackWaitMs, window: this.#o.window })))
    // The consumers' own ack wait (another instance may have made them with another): held events
    // are signalled well within it.
    this.#ackWaitMs = Math.min(...consumers.map((c) => c.ackWaitMs))
    this.#subscriptions.push(
      nc.subscribe(this.#n.statusSubject, {
        callback: (err, msg) => {
          if (err !== null) {
            this.#log.warn({ err }, 'status subscription failed')
            return
          }
          this.status().then((s) => msg.respond(JSON.stringify(s)), (e: unknown) => this.#log.warn({ err: e }, 'could not answer a status request'))
        }
      }),
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
    this.#ownership = await PartitionOwnership.open(nc, this.#n, {
      region: this.region, instance: this.#o.instance, partitions: this.#partitions, replicas: stream.replicas, logger: this.#log
    }, {
      acquired: ({ partition, revision }) => this.#startWorker(partition, revision),
      lost: (partition) => { void this.#stopWorker(partition, 'lost') },
      release: async (partition) => await this.#stopWorker(partition, 'release')
    })
    this.#ownership.start()
    this.#rateTimer = setInterval(() => { this.#appliedRing.shift(); this.#appliedRing.push(this.#counts.applied) }, 1000)
    this.#rateTimer.unref()
    this.#started = true
    this.#log.info({ partitions: this.#partitions, window: this.#o.window, target: this.#o.target.origin, instance: this.#ownership.instanceId }, 'replicator started')
  }

  #startWorker (partition: number, epoch: number): void {
    const own = this.#ownership as PartitionOwnership
    const consumer = this.#n.consumer(this.region, partition)
    const w = new PartitionWorker({
      partition,
      window: () => this.#windowPerPartition(),
      ackWaitMs: this.#ackWaitMs,
      owns: () => own.owns(partition, epoch),
      fenced: () => own.relinquish(partition, epoch),
      validForMs: () => own.validForMs(partition),
      decode: (data) => {
        try {
          const event = decodeEvent(data)
          return { key: event.resource, decoded: event }
        } catch {
          return null
        }
      },
      isApplied: async (e) => {
        const event = eventOf(e)
        if (event === null) return false
        const applied = this.#applied as AppliedLog
        if (applied.settledHere(event.id)) return true
        // A replayed create or DELETE is recorded in its entity's record alone (see #settle).
        const [logged, known] = await Promise.all([applied.has(event.id), (this.#ids as IdentityResolver).knowsApplied(event)])
        // Named by its entity's record: applied (never a dead letter, which `dlq replay` must still
        // be able to send), and remembered for its redelivery, as that record may move on first.
        if (known && !logged) applied.remember(event.id)
        return logged || known
      },
      run: async (e) => await this.#attempt(e, () => own.owns(partition, epoch)),
      settle: async (e, step) => await this.#settle(e, step),
      outstanding: async () => await this.#outstanding(partition),
      between: async (after, before) => await this.#readPartition(partition, after + 1, before - 1),
      pulls: (handlers) => new PullStream(this.#o.connection, this.#writes, this.#n.eventStream, consumer, handlers),
      log: this.#log
    })
    this.#workers.set(partition, w)
    w.start().catch((err) => this.#log.error({ err, partition }, 'partition worker failed to start'))
  }

  /**
   * Events held per owned partition: `--window`, within HELD_PER_REPLAY times `--concurrency` over
   * the partitions this instance owns. Events held beyond what the replays in flight can take wait
   * in their lanes long enough to be promoted to V8's old space, and the heap grows with them.
   */
  #windowPerPartition (): number {
    return Math.max(1, Math.min(this.#o.window, Math.ceil(HELD_PER_REPLAY * this.#o.concurrency / Math.max(1, this.#workers.size))))
  }

  async #stopWorker (partition: number, mode: 'release' | 'lost'): Promise<void> {
    const w = this.#workers.get(partition)
    if (w === undefined) return
    this.#workers.delete(partition)
    await w.stop(mode, this.#o.shutdownGraceMs)
  }

  /**
   * The events a previous owner may still hold: past the consumer's ack floor, up to what it last
   * delivered. They are applied (or found applied) before any later event of their resource.
   */
  async #outstanding (partition: number): Promise<StoredEvent[]> {
    const info = await this.#jsm.consumers.info(this.#n.eventStream, this.#n.consumer(this.region, partition))
    if (info.num_ack_pending === 0) return []
    return await this.#readPartition(partition, info.ack_floor.stream_seq + 1, info.delivered.stream_seq)
  }

  /** The partition's events from stream sequence `from` to `to`, inclusive, read from the stream. */
  async #readPartition (partition: number, from: number, to: number): Promise<StoredEvent[]> {
    const msgs = await readSubjectRange(this.#o.connection, this.#jsm, this.#n.eventStream, this.#n.partitionFilter(partition), from, to)
    return msgs.map((m) => ({ seq: m.seq, subject: m.subject, data: m.data, signature: m.headers?.get(EVENT_SIGNATURE_HEADER) || undefined }))
  }

  get partitions (): number {
    return this.#partitions
  }

  /** Partitions this instance owns now. */
  get owned (): number[] {
    return this.#ownership?.owned ?? []
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
    this.#statuses = this.#o.connection.status()
    for await (const s of this.#statuses) {
      if (s.type === 'disconnect') {
        this.#connected = false
        this.#log.warn({ server: s.server }, 'disconnected from NATS')
      } else if (s.type === 'reconnect') {
        this.#connected = true
        // A server that restarted may have lost consumer state and deliver applied events as new.
        for (const w of this.#workers.values()) w.reverify()
        this.#log.info({ server: s.server }, 'reconnected to NATS')
      }
    }
  }

  /** One attempt at an event of an owned partition: the verdict, carried out as far as the ack. */
  async #attempt (e: Entry, owns: () => boolean): Promise<Step> {
    const v = await this.#evaluate(e.data, e.signature, { seq: e.seq, fence: true }, e.attempt, owns, eventOf(e))
    if (v === null) return { kind: 'fenced' }
    switch (v.kind) {
      case 'retry':
        this.#counts.retries++
        this.metrics.retries.inc({ region: this.region })
        this.#noteError(new Error(v.reason))
        this.#log.warn({ seq: e.seq, attempt: e.attempt, delayMs: v.delayMs, reason: v.reason }, 'replay failed; retrying')
        return { kind: 'retry', delayMs: v.delayMs }
      case 'done':
        this.#verdicts.set(e, v)
        return { kind: 'done' }
      case 'dead':
        this.#verdicts.set(e, v)
        return { kind: 'dead' }
    }
  }

  /** Records what an event came to, before the server is answered for it. */
  async #settle (e: Entry, step: Step & { kind: 'done' | 'dead' }): Promise<void> {
    const v = this.#verdicts.get(e)
    this.#verdicts.delete(e)
    // Per event: the line's object is only built when someone reads it (a fault run's trace).
    if (this.#log.isLevelEnabled('debug')) {
      this.#log.debug({ seq: e.seq, key: e.key, attempt: e.attempt, deliveryCount: e.deliveryCount, outcome: v?.kind === 'done' ? v.outcome : v?.kind ?? 'found-applied' }, 'event settled')
    }
    const id = eventOf(e)?.id ?? null
    if (step.kind === 'dead' && v?.kind === 'dead') {
      await this.#deadLetter(e, v)
      if (id !== null) await this.#record(id, 'dead')
      return
    }
    // Found applied by the worker's check: nothing to record.
    if (v === undefined) {
      this.metrics.skipped.inc({ region: this.region, reason: 'already-applied' })
      return
    }
    if (v.kind !== 'done' || v.outcome === 'own-origin' || id === null) return
    // A create or DELETE the target's guard recorded: the entity's record, written before the
    // verdict, names it already, so one JetStream write per such replay is saved (a redelivery
    // reads the entity's record with the applied log; the guard answers a copy stored later).
    if (v.entityRecorded === true) (this.#applied as AppliedLog).remember(id)
    else await this.#record(id, v.outcome)
  }

  async #deadLetter (e: Entry, v: DeadVerdict): Promise<void> {
    await publishDeadLetter(this.#js, this.#n, {
      v: 1,
      region: this.region,
      reason: v.reason,
      detail: v.detail,
      status: v.status,
      excerpt: v.excerpt,
      ...eventFields(eventOf(e)),
      streamSeq: e.seq,
      subject: e.subject,
      failedAt: new Date().toISOString(),
      attempts: Math.max(e.attempt, e.deliveryCount),
      payload: Buffer.from(e.data).toString('base64'),
      signature: e.signature ?? null
    }, serverMaxPayload(this.#o.connection))
    this.#counts.deadLetters++
    this.metrics.deadLetters.inc({ region: this.region, reason: v.reason })
    this.#log.error({ seq: e.seq, reason: v.reason, status: v.status, detail: v.detail }, 'event dead-lettered')
  }

  /**
   * The target has the write (or the verdict is final): until the record holds, a redelivery would
   * replay it (harmless on a target with the plugin, a second write on one without). While
   * JetStream is unreachable the ack could not land either, so keep trying; on close, give up and
   * let the redelivery be deduplicated.
   */
  async #record (eventId: string, outcome: string): Promise<void> {
    await retryUntil(async () => { await (this.#applied as AppliedLog).record(eventId, outcome) }, {
      retryable: () => this.#closing === null,
      delayMs: (attempt) => Math.min(5000, 250 * attempt),
      onRetry: (err, attempt) => { if (attempt === 1) this.#log.warn({ err, eventId }, 'could not record an applied event yet; retrying') }
    })
  }

  /**
   * Decides and carries out what one event needs: verify, skip what this region must not apply,
   * replay it (only while `owns()` holds, checked right before the request goes out), and judge
   * the answer. Null when ownership ended before the replay went out.
   */
  async #evaluate (
    data: Uint8Array, signature: string | undefined, at: { seq: number, fence: boolean }, attempt: number, owns: () => boolean, decoded?: RegionsyncEvent | null
  ): Promise<Verdict | null> {
    const ids = this.#ids as IdentityResolver
    const a = admit(data, signature, this.region, this.#signer, decoded)
    if (a.kind !== 'replay') {
      if (a.kind === 'done') {
        // What this region created itself, its later events from elsewhere name by the same id.
        if (a.outcome === 'own-origin' && decoded != null) await ids.recordOwn(decoded, at.seq)
        this.metrics.skipped.inc({ region: this.region, reason: a.outcome })
      } else if (a.kind === 'dead') this.#noteError(new Error(`${a.reason}: ${a.detail}`))
      return a
    }
    const event = a.event
    if ((this.#applied as AppliedLog).settledHere(event.id)) {
      this.metrics.skipped.inc({ region: this.region, reason: 'already-applied' })
      return { kind: 'done', outcome: 'already-applied' }
    }
    let replay: Replay
    try {
      const t = await ids.translate(event)
      if (t.kind === 'unmapped') return this.#dead(dead('unmapped-id', t.detail))
      replay = buildReplay(t.path === event.path ? event : { ...event, path: t.path }, this.#target, this.#signer, at.fence ? at.seq : null)
    } catch (err) {
      if (isRegionsyncError(err, ErrorCode.BadPath)) return this.#dead(dead('bad-path', err.message))
      if (isRegionsyncError(err, ErrorCode.Undecryptable) || isRegionsyncError(err, ErrorCode.MalformedEvent)) return this.#dead(dead('undecryptable', err.message))
      throw err
    }
    // Every create's answer is read: the target may have given the resource another id (I8).
    const sent = await this.#send(replay, attempt, event.created !== null, owns)
    if (sent === null) return null
    let v = judge(replay.method, sent, attempt, { retry: this.#o.retry, alreadyApplied: this.#o.alreadyApplied })
    // The target's guard answering for a replay it has seen (superseded, or an earlier delivery
    // still running) says nothing of the resource itself.
    const guardAnswer = sent.headers[REPLAY_OUTCOME_HEADER] === 'superseded' || sent.headers[REPLAY_OUTCOME_HEADER] === 'in-progress'
    if (sent.status !== null && !guardAnswer) {
      // What the region's own records say of the answer: ids learnt, and whether a DELETE
      // answered 404 really finds the resource gone (else it is retried, then dead-lettered).
      const said = sent.headers[REPLAY_OUTCOME_HEADER]
      const identity = await ids.onAnswer(event, at.seq, replay.path, sent.status, sent.json, attempt, this.#o.retry, said === 'applied' ? 'names' : said === 'duplicate' ? 'repeat' : 'plain')
      if (identity.kind === 'applied' && identity.learnt?.remapped === true) {
        this.metrics.idsRemapped.inc({ region: this.region })
        this.#log.warn({ eventId: event.id, type: identity.learnt.type, sourceId: identity.learnt.sourceId, targetId: identity.learnt.targetId }, 'target gave a created resource another id; later paths naming it are rewritten')
      }
      // Recorded twice over: the entity's record names the event, and the target's guard has its id
      // (a copy of the event stored again later is answered from there).
      if (identity.kind === 'applied' && identity.recorded && v.kind === 'done') v = { kind: 'done', outcome: v.outcome, entityRecorded: true }
      if (identity.kind === 'already-applied') v = { kind: 'done', outcome: 'already-applied' }
      else if (identity.kind === 'retry') v = { kind: 'retry', delayMs: identity.delayMs, reason: identity.reason }
      else if (identity.kind === 'dead') v = dead(identity.reason, identity.detail, sent.status, sent.excerpt)
    }
    if (v.kind === 'retry' && isTargetDown(sent.status)) this.#breaker.failure()
    else if (v.kind === 'done') this.#breaker.success()
    else this.#breaker.neutral()
    if (v.kind === 'dead') return this.#dead(v)
    if (v.kind !== 'done') return v
    if (v.outcome === 'superseded') {
      this.metrics.skipped.inc({ region: this.region, reason: 'superseded' })
      return v
    }
    this.#counts.applied++
    this.metrics.applied.inc({ region: this.region })
    this.metrics.endToEndSeconds.observe({ region: this.region }, Math.max(0, Date.now() - Date.parse(event.committedAt)) / 1000)
    return v
  }

  #dead (v: DeadVerdict): DeadVerdict {
    this.#noteError(new Error(`${v.reason}: ${v.detail}`))
    return v
  }

  /** Sends one replay within the instance's limits; null when ownership ended before it could go out. */
  async #send (replay: Replay, attempt: number, readJson: boolean, owns: () => boolean): Promise<(Sent & { json?: unknown }) | null> {
    const abort = this.#shutdown.signal
    const release = await this.#slots.acquire()
    try {
      await this.#breaker.acquire(abort)
      if (this.#bucket !== null) await this.#bucket.take()
      // Last check before the request leaves: a stale owner (paused past its lease) sends nothing.
      // It may hold the breaker's one probe: give that back, or the breaker waits on it for ever.
      if (!owns()) {
        this.#breaker.neutral()
        return null
      }
      const timer = this.metrics.applySeconds.startTimer({ region: this.region })
      const endSpan = this.#tracing.start(replay)
      try {
        const res = await this.#client.send(replay, abort, readJson)
        endSpan(res.status)
        // Spelt out: a spread here cost about 6 us per event (measured).
        return { status: res.status, headers: res.headers, excerpt: res.excerpt, json: res.json, failure: null, aborted: false }
      } catch (err) {
        endSpan(null, err)
        throw err
      } finally {
        timer()
      }
    } catch (err) {
      // The transport's own code (ECONNREFUSED, UND_ERR_HEADERS_TIMEOUT) says more than its message.
      const detail = isRegionsyncError(err, ErrorCode.TargetUnreachable) ? err.message : errorCodeOf(err) ?? String(err instanceof Error ? err.message : err)
      return { status: null, headers: {}, excerpt: '', failure: `request failed (attempt ${attempt}): ${detail}`, aborted: abort.aborted }
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
    // No sequence: the target's fence has moved on past it if anything newer was applied, and the
    // superseded check above already refused that case.
    const verdict = await this.#evaluate(event.data, event.signature, { seq: letter.streamSeq, fence: false }, 1, () => true)
    if (verdict?.kind === 'done') {
      const id = eventIdOf(event.data)
      if (id !== null && verdict.outcome !== 'own-origin') await this.#record(id, verdict.outcome)
      await this.#jsm.streams.deleteMessage(this.#n.dlqStream, dlqSeq)
      return { ...base, outcome: verdict.outcome === 'already-applied' ? 'already-applied' : verdict.outcome === 'superseded' ? 'superseded' : 'applied', detail: '' }
    }
    return { ...base, outcome: 'failed', detail: verdict === null ? 'closing' : verdict.kind === 'dead' ? `${verdict.reason}: ${verdict.detail}` : verdict.reason }
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
      owned: this.owned,
      instances: this.#ownership?.members.length ?? 0,
      window: this.#o.window,
      ownership: OWNERSHIP_MODE,
      pending: lag.pending,
      lagSeconds: lag.lagSeconds,
      oldestPendingAt: lag.oldestPendingAt?.toISOString() ?? null,
      applied: this.#counts.applied,
      appliedPerSecond: (this.#counts.applied - (this.#appliedRing[0] as number)) / RATE_WINDOW_S,
      retries: this.#counts.retries,
      deadLetters: this.#counts.deadLetters,
      ownOrigin: (await this.metrics.skipped.get()).values.find((v) => v.labels.reason === 'own-origin')?.value ?? 0,
      breaker: this.#breaker.state,
      lastError: this.#lastError,
      startedAt: this.#startedAt.toISOString()
    }
  }

  /**
   * Stops taking work, lets in-flight replays finish within the grace period (then aborts them and
   * hands their events back), releases its partitions so the region's other instances take them at
   * once, closes the target pool and, when it owns the connection, drains NATS. Every call returns
   * the same promise.
   */
  close (): Promise<void> {
    this.#closing ??= this.#close()
    return this.#closing
  }

  async #close (): Promise<void> {
    for (const s of this.#subscriptions) s.unsubscribe()
    this.#statuses?.stop?.()
    if (this.#rateTimer !== null) clearInterval(this.#rateTimer)
    const grace = setTimeout(() => {
      this.#shutdown.abort()
      this.#breaker.close()
    }, this.#o.shutdownGraceMs)
    try {
      await this.#ownership?.close()
    } catch (err) {
      this.#log.warn({ err }, 'releasing partitions failed')
    }
    await Promise.allSettled([...this.#workers.keys()].map(async (p) => await this.#stopWorker(p, 'release')))
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

/** The event id, read without decoding the whole event when it can be; null when undecodable. */
function eventIdOf (data: Uint8Array): string | null {
  try {
    return decodeEvent(data).id
  } catch {
    return null
  }
}

/** The event the worker decoded on arrival; null when it could not be decoded. */
function eventOf (e: Entry): RegionsyncEvent | null {
  return e.decoded as RegionsyncEvent | null
}

function eventFields (e: RegionsyncEvent | null): { eventId: string | null, resource: string | null, method: string | null, path: string | null } {
  return e === null ? { eventId: null, resource: null, method: null, path: null } : { eventId: e.id, resource: e.resource, method: e.method, path: e.path }
}
