import { createHash } from 'node:crypto'
import { jetstreamManager } from '@nats-io/jetstream'
import { Kvm } from '@nats-io/kv'
import type { Msg, NatsConnection } from '@nats-io/transport-node'
import { ErrorCode, RegionsyncError, isRegionsyncError } from './errors.js'
import { InboxClient } from './inbox-client.js'
import { serverSupports } from './nats.js'
import { retryTimeouts } from './stream-setup.js'

export interface RegionRecordsSettings {
  /** How long a record lives; none when undefined. */
  ttlMs?: number
  replicas: number
  description: string
  /**
   * Let writes give their key a TTL of its own (`Nats-TTL`) where the server has per-message TTLs
   * (2.11 and later; the bucket's stream gets `allow_msg_ttl`). Older servers ignore the header
   * silently, so on them it is never sent and the bucket TTL is all there is. @default false
   */
  perKeyTtl?: boolean
}

/** A key's last message: its value (null for a delete marker) and its revision, for compare-and-set. */
export interface RecordEntry {
  value: string | null
  revision: number
}

/** Per-key options of a write. */
export interface RecordWrite {
  /** How long this key lives, where the bucket has per-key TTLs; the bucket's TTL otherwise. */
  ttlMs?: number
}

/** JetStream's error code for a write whose expected last subject sequence is not the key's. */
const WRONG_LAST_SEQUENCE = 10071
const SAFE_ID_RE = /^[-\w]{1,128}$/
const EMPTY = new Uint8Array(0)
/** Gets and puts are on the replicator's per-event path; past this NATS is taken for gone. */
const TIMEOUT_MS = 5000

/**
 * One region's records in a JetStream KV bucket shared by every region: keys are
 * `<region>.<id>`, so every instance of a region sees what another wrote. Ids that are not safe
 * KV tokens are hashed. `region` may carry a sub-scope (`eu.r`), for a second kind of record of
 * the same region in the same bucket.
 */
export class RegionRecords {
  readonly #inbox: InboxClient
  readonly #bucket: string
  readonly #region: string
  /** True when the bucket takes `Nats-TTL`. */
  readonly perKeyTtl: boolean

  private constructor (inbox: InboxClient, bucket: string, region: string, perKeyTtl: boolean) {
    this.#inbox = inbox
    this.#bucket = bucket
    this.#region = region
    this.perKeyTtl = perKeyTtl
  }

  /**
   * Creates the bucket if needed (with direct get on, as nats.js makes KV buckets), then reads and
   * writes its keys straight through the KV subjects and JetStream's direct get.
   */
  static async open (nc: NatsConnection, bucket: string, region: string, s: RegionRecordsSettings): Promise<RegionRecords> {
    const config = { history: 1, replicas: s.replicas, description: s.description, ...(s.ttlMs !== undefined ? { ttl: s.ttlMs } : {}) }
    // Every process creates the bucket; see retryTimeouts for why that can time out.
    await retryTimeouts(async () => await new Kvm(nc).create(bucket, config))
    const perKeyTtl = s.perKeyTtl === true && serverSupports(nc, 'perMessageTtl')
    if (perKeyTtl) {
      // A bucket made before (or by a process that did not ask) lacks it; it can be turned on, never off.
      const jsm = await jetstreamManager(nc)
      const info = await jsm.streams.info(`KV_${bucket}`)
      if ((info.config as { allow_msg_ttl?: boolean }).allow_msg_ttl !== true) {
        await jsm.streams.update(`KV_${bucket}`, { ...info.config, allow_msg_ttl: true } as typeof info.config)
      }
    }
    return new RegionRecords(new InboxClient(nc), bucket, region, perKeyTtl)
  }

  /** The record's value, or null when there is none (or it was deleted). */
  async get (id: string): Promise<string | null> {
    return (await this.entry(id))?.value ?? null
  }

  /** The key's last message, a delete marker included; null when the key has none. */
  async entry (id: string): Promise<RecordEntry | null> {
    const msg = await kvCall(this.#bucket, this.#inbox.request(`$JS.API.DIRECT.GET.KV_${this.#bucket}.${this.#subject(id)}`, EMPTY, TIMEOUT_MS))
    const code = msg.headers?.code ?? 0
    if (code === 404) return null
    if (code >= 300) throw new RegionsyncError(ErrorCode.KvUnreachable, `KV ${this.#bucket} answered ${code} ${msg.headers?.description ?? ''}`.trimEnd())
    const op = msg.headers?.get('KV-Operation')
    return { value: op === 'DEL' || op === 'PURGE' ? null : msg.string(), revision: Number(msg.headers?.get('Nats-Sequence')) }
  }

  async put (id: string, value: string, opts: RecordWrite = {}): Promise<void> {
    await kvCall(this.#bucket, this.#inbox.publish(this.#subject(id), Buffer.from(value), { timeoutMs: TIMEOUT_MS, headers: this.#ttl(opts) }))
  }

  /**
   * Writes the key only if it has never been written (or its history expired): one atomic
   * create-if-absent. Its revision, or null when the key exists (a delete marker counts: take it
   * over with `update` on its revision).
   */
  async create (id: string, value: string, opts: RecordWrite = {}): Promise<number | null> {
    return await this.update(id, value, 0, opts)
  }

  /** Writes the key only if `revision` is still its last (compare-and-set); the new revision, or null when it is not. */
  async update (id: string, value: string, revision: number, opts: RecordWrite = {}): Promise<number | null> {
    return await this.#expectLast(id, Buffer.from(value), revision, this.#ttl(opts))
  }

  /** Leaves a delete marker, only if `revision` is still the key's last; false when it is not. */
  async remove (id: string, revision: number, opts: RecordWrite = {}): Promise<boolean> {
    const headers = this.#ttl(opts)
    headers['KV-Operation'] = 'DEL'
    return await this.#expectLast(id, EMPTY, revision, headers) !== null
  }

  /** `headers`: a fresh object, which this fills in. */
  async #expectLast (id: string, data: Uint8Array, revision: number, headers: Record<string, string>): Promise<number | null> {
    // `headers` is a fresh object of the caller's: the expectation goes into it, not into a spread
    // copy (V8 builds a spread with a key like this in slow mode: 8 us per write in a profile).
    headers['Nats-Expected-Last-Subject-Sequence'] = String(revision)
    const msg = await kvCall(this.#bucket, this.#inbox.request(this.#subject(id), data, TIMEOUT_MS, headers))
    const ack = parseAck(msg, this.#bucket)
    return 'wrongLast' in ack ? null : ack.seq
  }

  #ttl (opts: RecordWrite): Record<string, string> {
    return this.perKeyTtl && opts.ttlMs !== undefined ? { 'Nats-TTL': `${Math.max(1, Math.ceil(opts.ttlMs / 1000))}s` } : {}
  }

  close (): void {
    this.#inbox.close()
  }

  #subject (id: string): string {
    return `$KV.${this.#bucket}.${this.#region}.${SAFE_ID_RE.test(id) ? id : createHash('sha256').update(id).digest('base64url').slice(0, 43)}`
  }
}

/** A KV request that got no answer, or a refusal, fails as KvUnreachable whatever the inbox said. */
async function kvCall<T> (bucket: string, call: Promise<T>): Promise<T> {
  try {
    return await call
  } catch (err) {
    if (isRegionsyncError(err, ErrorCode.Publish)) throw new RegionsyncError(ErrorCode.KvUnreachable, `KV ${bucket}: ${err.message}`, { cause: err })
    throw err
  }
}

function parseAck (msg: Msg, bucket: string): { seq: number } | { wrongLast: true } {
  if (msg.headers?.code === 503 || msg.data.length === 0) throw new RegionsyncError(ErrorCode.KvUnreachable, `no JetStream stream answered for KV ${bucket}`)
  const ack = msg.json<{ seq?: number, error?: { err_code?: number, code?: number, description?: string } }>()
  if (ack.error !== undefined) {
    if (ack.error.err_code === WRONG_LAST_SEQUENCE) return { wrongLast: true }
    throw new RegionsyncError(ErrorCode.KvUnreachable, `KV ${bucket} refused the write: ${ack.error.description ?? 'unknown error'} (${ack.error.err_code ?? ack.error.code ?? '?'})`)
  }
  return { seq: ack.seq ?? 0 }
}
