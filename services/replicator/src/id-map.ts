import type { NatsConnection } from '@nats-io/transport-node'
import { RegionRecords, type Names } from '@regionsync/shared'

const CACHE_LIMIT = 10_000

/**
 * Source id -> target id, per region (I8, 'translate'): learnt from a replayed create's response
 * and used to rewrite later events' paths. In JetStream KV, so every instance of the region sees
 * it, with no TTL: a mapping lives as long as its resource. A small cache saves repeat look-ups.
 */
export class IdMap {
  readonly #records: RegionRecords
  readonly #cache = new Map<string, string>()

  private constructor (records: RegionRecords) {
    this.#records = records
  }

  static async open (nc: NatsConnection, n: Names, region: string, replicas: number): Promise<IdMap> {
    return new IdMap(await RegionRecords.open(nc, n.idBucket, region, { replicas, description: 'regionsync: source id to target id per region' }))
  }

  async get (sourceId: string): Promise<string | null> {
    const cached = this.#cache.get(sourceId)
    if (cached !== undefined) return cached
    const target = await this.#records.get(sourceId)
    // Only hits are cached: a miss may be learnt by another instance a moment later.
    if (target !== null) this.#remember(sourceId, target)
    return target
  }

  async put (sourceId: string, targetId: string): Promise<void> {
    await this.#records.put(sourceId, targetId)
    this.#remember(sourceId, targetId)
  }

  /** The event's path with every identifier segment the region knows under another id rewritten. */
  async translatePath (path: string, segments: number[]): Promise<string> {
    if (segments.length === 0) return path
    const parts = path.split('/')
    for (const i of segments) {
      const part = parts[i]
      if (part === undefined || part === '') continue
      const mapped = await this.get(decodeURIComponent(part))
      if (mapped !== null) parts[i] = encodeURIComponent(mapped)
    }
    return parts.join('/')
  }

  #remember (sourceId: string, targetId: string): void {
    if (this.#cache.size >= CACHE_LIMIT) this.#cache.delete(this.#cache.keys().next().value as string)
    this.#cache.set(sourceId, targetId)
  }

  close (): void {
    this.#records.close()
  }
}
