import { performance } from 'node:perf_hooks'
import { Kvm, type KV } from '@nats-io/kv'
import type { NatsConnection } from '@nats-io/transport-node'
import { retryTimeouts, type Logger, type Names } from '@regionsync/shared'

/**
 * A lease lives this long on the server after its last renewal (the bucket's max age, so expiry
 * is the server's clock, never a comparison of two machines' clocks). It bounds how long a dead
 * instance's partitions wait for a new owner.
 */
export const LEASE_TTL_MS = 5000
/** How often an owner renews its leases and every instance announces itself. */
export const RENEW_INTERVAL_MS = 1000
/**
 * An owner takes itself for the owner only until this long before the lease could expire on the
 * server, measured from when it sent the renewal: a renewal that is slow to land, or a process
 * that was paused and has not noticed yet, stops acting before anyone else can take over. What is
 * left (4 s from a renewal's sending, renewed every second) rides out a busy event loop: at 80 ms
 * from NATS, a replicator taking on a backlog of thousands saw a renewal take 1.7 s.
 */
export const LEASE_SAFETY_MS = 1000
/**
 * Longest a lease or announcement request may take before the round gives up on it. A request
 * made while the connection was reconnecting was seen never to settle, and a round that waits
 * for it renews nothing again: every partition lapses for good.
 */
const KV_OP_TIMEOUT_MS = 2000

export interface LeaseInfo {
  partition: number
  /** The lease's KV revision: the fencing token of this ownership. */
  revision: number
}

export interface OwnershipHandlers {
  /** This instance now owns the partition. */
  acquired: (lease: LeaseInfo) => void
  /** The lease is gone (another instance holds it, or it could not be renewed in time): stop at once. */
  lost: (partition: number) => void
  /**
   * Another instance should own the partition now (one joined): stop taking work, finish or hand
   * back what is in flight, and resolve; the lease is released after.
   */
  release: (partition: number) => Promise<void>
}

interface Held {
  /** The revision the lease was created with: tells one ownership of the partition from the next. */
  epoch: number
  revision: number
  /** performance.now() until which this instance may act as the owner. */
  validUntil: number
  releasing: boolean
}

/**
 * Which instance of a region owns which partition: a lease per partition in a JetStream KV bucket,
 * taken with a create (compare-and-set on "absent"), renewed with an update on its revision, and
 * gone on the server when its owner stops renewing. The live instances of a region (each renews
 * a member key) share the partitions evenly, in a deterministic assignment every instance computes
 * alike; an owner that is no longer assigned a partition releases it gracefully, and the assigned
 * instance takes it. Works on every server version regionsync supports.
 */
export class PartitionOwnership {
  readonly #kv: KV
  readonly #region: string
  readonly #instance: string
  readonly #partitions: number
  readonly #h: OwnershipHandlers
  readonly #log: Logger
  readonly #held = new Map<number, Held>()
  /** Member id -> performance.now() when its announcement was last seen. */
  readonly #members = new Map<string, number>()
  #timer: NodeJS.Timeout | null = null
  #ticking: Promise<void> | null = null
  #closed = false
  #watch: { stop: () => void } | null = null
  /** Hand-overs under way; they run beside the renewal rounds, which must never wait for them. */
  readonly #releasing = new Set<Promise<void>>()

  private constructor (kv: KV, region: string, instance: string, partitions: number, h: OwnershipHandlers, log: Logger) {
    this.#kv = kv
    this.#region = region
    this.#instance = instance
    this.#partitions = partitions
    this.#h = h
    this.#log = log
  }

  static async open (nc: NatsConnection, n: Names, o: { region: string, instance: string, partitions: number, replicas: number, logger: Logger }, h: OwnershipHandlers): Promise<PartitionOwnership> {
    const kv = await retryTimeouts(async () => await new Kvm(nc).create(n.ownersBucket, {
      ttl: LEASE_TTL_MS, history: 1, replicas: o.replicas, description: 'regionsync: partition leases and live instances per region'
    }))
    const own = new PartitionOwnership(kv, o.region, memberId(o.instance), o.partitions, h, o.logger)
    await own.#startWatch()
    return own
  }

  /** Starts announcing this instance and taking its share of the partitions. */
  start (): void {
    this.#members.set(this.#instance, performance.now())
    const loop = (): void => {
      if (this.#closed) return
      this.#ticking = this.#tick().catch((err) => this.#log.warn({ err }, 'ownership round failed'))
      void this.#ticking.finally(() => {
        if (!this.#closed) this.#timer = setTimeout(loop, RENEW_INTERVAL_MS)
      })
    }
    loop()
  }

  get instanceId (): string {
    return this.#instance
  }

  /**
   * True while this instance may act for the partition under the ownership that began with
   * `epoch` (checked before every replay it sends): a worker of an earlier ownership of the same
   * partition by this same instance is fenced too.
   */
  owns (partition: number, epoch: number): boolean {
    const h = this.#held.get(partition)
    return h !== undefined && h.epoch === epoch && !h.releasing && performance.now() < h.validUntil
  }

  /**
   * Gives up the partition now (its worker could not keep it in order: it stopped acting while the
   * lease lapsed). The lease is deleted so that the next owner, maybe this instance again, starts
   * from what the consumer holds.
   */
  relinquish (partition: number, epoch: number): void {
    const h = this.#held.get(partition)
    if (h === undefined || h.epoch !== epoch) return
    this.#held.delete(partition)
    this.#log.warn({ partition }, 'partition given up after its ownership lapsed')
    this.#h.lost(partition)
    void this.#kv.delete(this.#leaseKey(partition), { previousSeq: h.revision }).catch(() => {})
  }

  /** Milliseconds this instance may still act for the partition without another renewal. */
  validForMs (partition: number): number {
    const h = this.#held.get(partition)
    return h === undefined || h.releasing ? 0 : Math.max(0, h.validUntil - performance.now())
  }

  /** Partitions this instance owns now, ascending. */
  get owned (): number[] {
    return [...this.#held.entries()].filter(([p, h]) => this.owns(p, h.epoch)).map(([p]) => p).sort((a, b) => a - b)
  }

  /** Live instances of the region this instance knows of, itself included. */
  get members (): string[] {
    this.#expireMembers()
    return [...this.#members.keys()].sort()
  }

  async #startWatch (): Promise<void> {
    const it = await this.#kv.watch({ key: `${this.#region}.m.>` })
    this.#watch = it
    void (async () => {
      for await (const e of it) {
        const id = e.key.slice(`${this.#region}.m.`.length)
        if (e.operation === 'PUT') this.#members.set(id, performance.now())
        else this.#members.delete(id)
      }
    })().catch((err) => this.#log.warn({ err }, 'instance watch ended'))
  }

  #expireMembers (): void {
    const now = performance.now()
    for (const [id, seen] of this.#members) {
      if (id !== this.#instance && now - seen > LEASE_TTL_MS) this.#members.delete(id)
    }
  }

  /** The partitions the assignment gives this instance: round robin over the sorted live members. */
  #assigned (): Set<number> {
    const members = this.members
    const me = members.indexOf(this.#instance)
    const mine = new Set<number>()
    for (let p = 0; p < this.#partitions; p++) if (p % members.length === me) mine.add(p)
    return mine
  }

  async #tick (): Promise<void> {
    const work: Array<Promise<void>> = [this.#announce()]
    const assigned = this.#assigned()
    for (const [p, h] of this.#held) {
      if (h.releasing) continue
      if (assigned.has(p)) {
        work.push(this.#renew(p, h))
        continue
      }
      // A hand-over waits for the worker to finish what it holds (seconds): the other leases
      // must go on being renewed meanwhile.
      const release = this.#release(p, h).catch((err) => this.#log.warn({ err, partition: p }, 'handing a partition over failed'))
      this.#releasing.add(release)
      void release.finally(() => this.#releasing.delete(release))
    }
    for (const p of assigned) if (!this.#held.has(p)) work.push(this.#acquire(p))
    await Promise.all(work)
  }

  async #announce (): Promise<void> {
    await bounded(this.#kv.put(`${this.#region}.m.${this.#instance}`, JSON.stringify({ at: new Date().toISOString() })))
    this.#members.set(this.#instance, performance.now())
  }

  #value (): string {
    return JSON.stringify({ instance: this.#instance })
  }

  async #acquire (partition: number): Promise<void> {
    const key = this.#leaseKey(partition)
    const sentAt = performance.now()
    let revision: number
    try {
      revision = await bounded(this.#kv.create(key, this.#value()))
    } catch {
      return // another instance holds it, or NATS did not answer: the next round tries again
    }
    if (this.#closed) {
      await bounded(this.#kv.delete(key, { previousSeq: revision })).catch(() => {})
      return
    }
    this.#held.set(partition, { epoch: revision, revision, validUntil: sentAt + LEASE_TTL_MS - LEASE_SAFETY_MS, releasing: false })
    this.#log.info({ partition, revision }, 'partition acquired')
    this.#h.acquired({ partition, revision })
  }

  async #renew (partition: number, h: Held): Promise<void> {
    const sentAt = performance.now()
    try {
      h.revision = await bounded(this.#kv.update(this.#leaseKey(partition), this.#value(), h.revision))
      h.validUntil = sentAt + LEASE_TTL_MS - LEASE_SAFETY_MS
    } catch (err) {
      // A wrong revision means someone else holds it now; anything else (NATS slow or away) leaves
      // the lease to run out, and the owner stops acting when validUntil passes.
      if (performance.now() >= h.validUntil || isWrongRevision(err)) this.#drop(partition, err)
    }
  }

  #drop (partition: number, err: unknown): void {
    if (!this.#held.delete(partition)) return
    this.#log.warn({ partition, err }, 'partition ownership lost')
    this.#h.lost(partition)
  }

  async #release (partition: number, h: Held): Promise<void> {
    h.releasing = true
    this.#log.info({ partition }, 'partition handed over to another instance')
    try {
      await this.#h.release(partition)
    } finally {
      this.#held.delete(partition)
      await bounded(this.#kv.delete(this.#leaseKey(partition), { previousSeq: h.revision })).catch(() => {})
    }
  }

  #leaseKey (partition: number): string {
    return `${this.#region}.p${partition}`
  }

  /** Releases every partition (each after its handler resolved) and stops announcing this instance. */
  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    if (this.#timer !== null) clearTimeout(this.#timer)
    await this.#ticking
    await Promise.all([...this.#held.entries()].filter(([, h]) => !h.releasing).map(async ([p, h]) => await this.#release(p, h).catch(() => {})))
    await Promise.allSettled([...this.#releasing])
    await bounded(this.#kv.delete(`${this.#region}.m.${this.#instance}`)).catch(() => {})
    this.#watch?.stop()
  }
}

/** `p`, or a rejection once KV_OP_TIMEOUT_MS have passed. */
async function bounded<T> (p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([p, new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer from the lease bucket in ${KV_OP_TIMEOUT_MS} ms`)), KV_OP_TIMEOUT_MS)
    })])
  } finally {
    clearTimeout(timer)
  }
}

function isWrongRevision (err: unknown): boolean {
  const code = (err as { api_error?: { err_code?: number } }).api_error?.err_code
  return code === 10071 || /wrong last sequence/i.test((err as Error).message ?? '')
}

/** A KV token: the instance name with anything else replaced, made unique per process start. */
function memberId (instance: string): string {
  return `${instance.replace(/[^-\w]/g, '_').slice(0, 48)}-${Math.random().toString(36).slice(2, 8)}`
}
