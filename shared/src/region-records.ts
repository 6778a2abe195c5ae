import { createHash } from 'node:crypto'
import { Kvm, type KV } from '@nats-io/kv'
import type { NatsConnection } from '@nats-io/transport-node'

export interface RegionRecordsSettings {
  /** How long a record lives; none when undefined. */
  ttlMs?: number
  replicas: number
  description: string
}

const SAFE_ID_RE = /^[-\w]{1,128}$/

/**
 * One region's records in a JetStream KV bucket shared by every region: keys are
 * `<region>.<id>`, so every instance of a region sees what another wrote. Ids that are not safe
 * KV tokens are hashed.
 */
export class RegionRecords {
  readonly #kv: KV
  readonly #region: string

  private constructor (kv: KV, region: string) {
    this.#kv = kv
    this.#region = region
  }

  static async open (nc: NatsConnection, bucket: string, region: string, s: RegionRecordsSettings): Promise<RegionRecords> {
    const kv = await new Kvm(nc).create(bucket, {
      history: 1,
      replicas: s.replicas,
      description: s.description,
      ...(s.ttlMs !== undefined ? { ttl: s.ttlMs } : {})
    })
    return new RegionRecords(kv, region)
  }

  /** The record's value, or null when there is none (or it was deleted). */
  async get (id: string): Promise<string | null> {
    const e = await this.#kv.get(this.#key(id))
    return e === null || e.operation !== 'PUT' ? null : e.string()
  }

  async put (id: string, value: string): Promise<void> {
    await this.#kv.put(this.#key(id), value)
  }

  #key (id: string): string {
    return `${this.#region}.${SAFE_ID_RE.test(id) ? id : createHash('sha256').update(id).digest('base64url').slice(0, 43)}`
  }
}
