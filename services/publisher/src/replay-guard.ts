import { createHash, randomBytes } from 'node:crypto'
import type { NatsConnection } from '@nats-io/transport-node'
import { RegionRecords, type Names, type RecordEntry } from '@regionsync/shared'

/** Bodies up to this size are kept to answer a duplicate replay with; larger ones keep the status only. */
export const MAX_RECORDED_BODY_BYTES = 64 * 1024

/**
 * A claim still 'running' after this long was left by a process that died between claiming a
 * replay and recording its answer (crash, kill -9, lost host), and the next delivery may take it
 * over. It must be longer than any replay can honestly take: the replicator gives up on a request
 * after its target timeout (10 s by default) and JetStream redelivers after the ack wait (30 s by
 * default), so past a minute nobody is waiting on the first attempt any more. A handler slower
 * than this may run twice. A claim this process left itself, with no handler running (its write
 * timed out yet landed, or giving it back failed), is taken over at the next delivery, at once.
 */
export const CLAIM_ABANDONED_MS = 60_000

/** What a replay's first application answered. */
export interface RecordedAnswer {
  status: number
  contentType: string | null
  /** base64; empty when the body was larger than MAX_RECORDED_BODY_BYTES. */
  body: string
}

/**
 * One replay's record, under `<region>.<event id>`. `by` names the attempt that claimed it
 * (`<process>:<n>`; absent in records of earlier versions).
 */
export type ReplayRecord =
  | { state: 'running', bodyHash: string, at: number, by?: string }
  | ({ state: 'finished', bodyHash: string, at: number } & RecordedAnswer)

/** A replay this process claimed: it runs the handler, then finishes or releases the claim. */
export interface Claim {
  eventId: string
  /** The attempt, as its record names it. */
  by: string
  revision: number
  bodyHash: string
  /** The resource's fence when the claim was taken, to raise after a 2xx; null without a sequence. */
  fence: Fence | null
}

interface Fence {
  id: string
  seq: number
  /** The fence's last entry when read: its highest applied sequence and revision; null when none. */
  last: { seq: number, revision: number } | null
}

/** What to do with a genuine replay, decided before its handler runs. */
export type Verdict =
  | { kind: 'run', claim: Claim }
  /** Applied before: answer as the first time. */
  | { kind: 'duplicate', answer: RecordedAnswer }
  /** Another request is applying it right now (409, Retry-After). */
  | { kind: 'in-progress' }
  /** The same event id with another body (422). */
  | { kind: 'different-body' }
  /** An event of the resource with a later sequence is applied already (208). */
  | { kind: 'superseded' }

/**
 * What an existing record means for a replay with `bodyHash`, at `nowMs`: a pure function, the
 * whole policy of the guard (draft-ietf-httpapi-idempotency-key-header for the answers).
 * `dead(by)` says whether a running claim is known never to run its handler any more: one of this
 * process's own attempts that is over without recording an answer (its claim was written although
 * the write timed out, or giving it back failed).
 */
export function judgeRecord (record: ReplayRecord | null, bodyHash: string, nowMs: number, dead: (by: string) => boolean = () => false): 'take-over' | 'duplicate' | 'in-progress' | 'different-body' {
  // A released claim (delete marker): the earlier attempt answered non-2xx and may be retried.
  if (record === null) return 'take-over'
  if (record.bodyHash !== bodyHash) return 'different-body'
  if (record.state === 'finished') return 'duplicate'
  if (record.by !== undefined && dead(record.by)) return 'take-over'
  return nowMs - record.at >= CLAIM_ABANDONED_MS ? 'take-over' : 'in-progress'
}

/** The fence lets a replay through only when its sequence is above the highest applied for its resource. */
export function isSuperseded (seq: number, fenceSeq: number | null): boolean {
  return fenceSeq !== null && seq <= fenceSeq
}

export const bodyHashOf = (body: Buffer | null): string => createHash('sha256').update(body ?? Buffer.alloc(0)).digest('base64url')
const fenceIdOf = (resource: string): string => createHash('sha256').update(resource).digest('base64url')

export interface ReplayGuardSettings {
  region: string
  /** How long an answer and a fence are kept: as long as the stream may redeliver the event. */
  recordTtlMs: number
  replicas: number
  now?: () => number
}

/**
 * What the plugin on a target remembers of the replays it applied (I4), in one JetStream KV bucket
 * per deployment, per region: a claim per event id taken with one create-if-absent (no
 * read-then-write race between two deliveries, in one process or several), the first answer
 * recorded in it, and per resource a fence holding the highest stream sequence applied, so an
 * older event that arrives late (a dead letter replayed, a repair) cannot undo a newer one. It
 * covers the gap the replicator's own record cannot: a crash between the target's 2xx and the
 * replicator writing its record.
 *
 * On nats-server 2.11 and later, keys carry their own TTL (`Nats-TTL`): a released claim's marker
 * goes after CLAIM_ABANDONED_MS, answers and fences after `recordTtlMs`. Older servers keep
 * everything for the bucket TTL, which is `recordTtlMs`.
 */
export class ReplayGuard {
  readonly #claims: RegionRecords
  readonly #fences: RegionRecords
  readonly #s: ReplayGuardSettings
  readonly #now: () => number
  /** Names this process's claims: `<process>:<n>`. */
  readonly #process = randomBytes(6).toString('base64url')
  #attempts = 0
  /** This process's attempts that may still run their handler: claiming, or claimed and not yet answered. */
  readonly #live = new Set<string>()

  private constructor (claims: RegionRecords, fences: RegionRecords, s: ReplayGuardSettings) {
    this.#claims = claims
    this.#fences = fences
    this.#s = s
    this.#now = s.now ?? Date.now
  }

  static async open (nc: NatsConnection, n: Names, s: ReplayGuardSettings): Promise<ReplayGuard> {
    const settings = { ttlMs: s.recordTtlMs, replicas: s.replicas, description: 'regionsync: replays answered and resources fenced, per region', perKeyTtl: true }
    const claims = await RegionRecords.open(nc, n.replayBucket, s.region, settings)
    // Same bucket, keys `<region>.r.<hash of resource>`.
    const fences = await RegionRecords.open(nc, n.replayBucket, `${s.region}.r`, settings)
    return new ReplayGuard(claims, fences, s)
  }

  /** True when keys expire one by one (nats-server 2.11+), false when only the bucket TTL applies. */
  get perKeyTtl (): boolean {
    return this.#claims.perKeyTtl
  }

  /**
   * Claims a replay, or says why it must not run. Throws when JetStream does not answer: then
   * nobody can tell, and the replay must not run either.
   */
  async claim (eventId: string, body: Buffer | null, seq: number | null, resource: string): Promise<Verdict> {
    const by = `${this.#process}:${++this.#attempts}`
    this.#live.add(by)
    let verdict: Verdict | undefined
    try {
      verdict = await this.#claim(eventId, body, seq, resource, by)
      return verdict
    } finally {
      // Only a claim handed to the caller may still run; a write that failed or timed out may have
      // left the record, which the next delivery then takes over at once (see judgeRecord).
      if (verdict?.kind !== 'run') this.#live.delete(by)
    }
  }

  async #claim (eventId: string, body: Buffer | null, seq: number | null, resource: string, by: string): Promise<Verdict> {
    const bodyHash = bodyHashOf(body)
    const fenceId = seq === null || resource === '' ? null : fenceIdOf(resource)
    const running = (): string => JSON.stringify({ state: 'running', bodyHash, at: this.#now(), by } satisfies ReplayRecord)
    const dead = (other: string): boolean => other.startsWith(`${this.#process}:`) && !this.#live.has(other)
    const [created, fenceEntry] = await Promise.all([
      this.#claims.create(eventId, running(), { ttlMs: this.#s.recordTtlMs }),
      fenceId === null ? null : this.#fences.entry(fenceId)
    ])
    let revision = created
    for (let attempt = 0; revision === null; attempt++) {
      const entry = await this.#claims.entry(eventId)
      if (entry === null) {
        // Expired between our create and our read: create again.
        revision = await this.#claims.create(eventId, running(), { ttlMs: this.#s.recordTtlMs })
        continue
      }
      const record = parseRecord(entry)
      const judged = judgeRecord(record, bodyHash, this.#now(), dead)
      if (judged === 'duplicate') return { kind: 'duplicate', answer: record as RecordedAnswer }
      if (judged !== 'take-over') return { kind: judged }
      revision = await this.#claims.update(eventId, running(), entry.revision, { ttlMs: this.#s.recordTtlMs })
      // Lost the take-over to another delivery: it runs; look again to answer as it says.
      if (revision === null && attempt > 2) return { kind: 'in-progress' }
    }
    const last = fenceEntry === null || fenceEntry.value === null ? null : { seq: Number(fenceEntry.value), revision: fenceEntry.revision }
    const claim: Claim = { eventId, by, revision, bodyHash, fence: fenceId === null ? null : { id: fenceId, seq: seq as number, last } }
    if (claim.fence !== null && isSuperseded(claim.fence.seq, last?.seq ?? null)) {
      // Recorded as answered, so its next delivery is answered the same without a fence read.
      await this.#finishClaim(claim, SUPERSEDED_ANSWER)
      return { kind: 'superseded' }
    }
    return { kind: 'run', claim }
  }

  /**
   * After a 2xx: records the answer and raises the resource's fence, both at once; resolves once
   * both hold. Throws when JetStream does not take them.
   */
  async finish (claim: Claim, answer: RecordedAnswer): Promise<void> {
    await Promise.all([this.#finishClaim(claim, answer), this.#raiseFence(claim)])
    this.#live.delete(claim.by)
  }

  /** After a non-2xx: gives the claim back, so the replicator's retry runs the handler again. */
  async release (claim: Claim): Promise<void> {
    try {
      await this.#claims.remove(claim.eventId, claim.revision, { ttlMs: CLAIM_ABANDONED_MS })
    } finally {
      // Its handler is over either way: when the marker could not be written, the next delivery
      // to this process takes the claim over (another process waits CLAIM_ABANDONED_MS).
      this.#live.delete(claim.by)
    }
  }

  close (): void {
    this.#claims.close()
    this.#fences.close()
  }

  async #finishClaim (claim: Claim, answer: RecordedAnswer): Promise<void> {
    const record: ReplayRecord = { state: 'finished', bodyHash: claim.bodyHash, at: this.#now(), ...answer }
    const revision = await this.#claims.update(claim.eventId, JSON.stringify(record), claim.revision, { ttlMs: this.#s.recordTtlMs })
    // Taken over meanwhile (this attempt outlived CLAIM_ABANDONED_MS): the other attempt's record stands.
    if (revision !== null) claim.revision = revision
  }

  /** Only ever up: compare-and-set on the revision read, read again when another replay moved it. */
  async #raiseFence (claim: Claim): Promise<void> {
    const fence = claim.fence
    if (fence === null) return
    let last = fence.last
    for (;;) {
      if (last !== null && last.seq >= fence.seq) return
      const value = String(fence.seq)
      const opts = { ttlMs: this.#s.recordTtlMs }
      const written = last === null
        ? await this.#fences.create(fence.id, value, opts)
        : await this.#fences.update(fence.id, value, last.revision, opts)
      if (written !== null) return
      const entry: RecordEntry | null = await this.#fences.entry(fence.id)
      last = entry === null ? null : { seq: entry.value === null ? 0 : Number(entry.value), revision: entry.revision }
    }
  }
}

/** Answer to a replay its resource's fence stops: 208 Already Reported, with the outcome header. */
const SUPERSEDED_ANSWER: RecordedAnswer = { status: 208, contentType: null, body: '' }

function parseRecord (entry: RecordEntry): ReplayRecord | null {
  if (entry.value === null) return null
  return JSON.parse(entry.value) as ReplayRecord
}
