import { createHash } from 'node:crypto'
import { Kvm } from '@nats-io/kv'
import type { NatsConnection } from '@nats-io/transport-node'
import { ErrorCode, RegionsyncError } from './errors.js'
import { InboxClient } from './inbox-client.js'
import { retryTimeouts } from './stream-setup.js'

export interface RegionRecordsSettings {
  /** How long a record lives; none when undefined. */
  ttlMs?: number
  replicas: number
  description: string
}

const SAFE_ID_RE = /^[-\w]{1,128}$/
const EMPTY = new Uint8Array(0)
/** Gets and puts are on the replicator's per-event path; past this NATS is taken for gone. */
const TIMEOUT_MS = 5000

/**
 * One region's records in a JetStream KV bucket shared by every region: keys are
 * `<region>.<id>`, so every instance of a region sees what another wrote. Ids that are not safe
 * KV tokens are hashed.
 */
export class RegionRecords {
  readonly #inbox: InboxClient
  readonly #bucket: string
  readonly #region: string

  private constructor (inbox: InboxClient, bucket: string, region: string) {
    this.#inbox = inbox
    this.#bucket = bucket
    this.#region = region
  }

  /**
   * Creates the bucket if needed (with direct get on, as nats.js makes KV buckets), then reads and
   * writes its keys straight through the KV subjects and JetStream's direct get.
   */
  static async open (nc: NatsConnection, bucket: string, region: string, s: RegionRecordsSettings): Promise<RegionRecords> {
    const config = { history: 1, replicas: s.replicas, description: s.description, ...(s.ttlMs !== undefined ? { ttl: s.ttlMs } : {}) }
    // Every process creates the bucket; see retryTimeouts for why that can time out.
    await retryTimeouts(async () => await new Kvm(nc).create(bucket, config))
    return new RegionRecords(new InboxClient(nc), bucket, region)
  }

  /** The record's value, or null when there is none (or it was deleted). */
  async get (id: string): Promise<string | null> {
    const msg = await this.#inbox.request(`$JS.API.DIRECT.GET.KV_${this.#bucket}.${this.#subject(id)}`, EMPTY, TIMEOUT_MS)
    const code = msg.headers?.code ?? 0
    if (code === 404) return null
    if (code >= 300) throw new RegionsyncError(ErrorCode.Publish, `KV ${this.#bucket} answered ${code} ${msg.headers?.description ?? ''}`.trimEnd())
    const op = msg.headers?.get('KV-Operation')
    return op === 'DEL' || op === 'PURGE' ? null : msg.string()
  }

  async put (id: string, value: string): Promise<void> {
    await this.#inbox.publish(this.#subject(id), Buffer.from(value), { timeoutMs: TIMEOUT_MS })
  }

  close (): void {
    this.#inbox.close()
  }

  #subject (id: string): string {
    return `$KV.${this.#bucket}.${this.#region}.${SAFE_ID_RE.test(id) ? id : createHash('sha256').update(id).digest('base64url').slice(0, 43)}`
  }
}
