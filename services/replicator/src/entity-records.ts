import { createHash } from 'node:crypto'
import type { NatsConnection } from '@nats-io/transport-node'
import { RegionRecords, type Names } from '@regionsync/shared'

/**
 * What one region knows of one resource it was told about, keyed by the resource's path in the
 * source's terms (`/api/articles/<source slug>`, `/api/articles/<source slug>/comments/<source id>`):
 * the entity a create made or a DELETE names. Written when an event is applied (or, for the
 * region's own writes, when the replicator skips them), read to translate paths and to decide
 * what a DELETE answered 404 means.
 */
export interface EntityRecord {
  v: 1
  /** The entity's path in the source's terms, for whoever lists the bucket. */
  entity: string
  /** The id the target gave it; null when its create was applied but the answer named none. */
  targetId: string | null
  /** Stream sequence of the create this region applied (or took, when it was the origin); null when it never saw one. */
  createdSeq: number | null
  /** Stream sequence of the DELETE this region applied since that create; null while it exists. */
  deletedSeq: number | null
  /**
   * Id of the replayed create (`createdEvent`) or DELETE (`deletedEvent`) whose 2xx wrote this
   * record, when the target's plugin ran and recorded that replay (`x-regionsync-outcome:
   * applied`): the event is then known applied from here, and the region's applied log does not
   * hold it (see Replicator's settle). Absent in records of earlier versions, of the region's own
   * writes, of a create answered 409, of a DELETE answered 404, of a mapping made by hand, of an
   * answer the plugin repeated from its record, and of replays to a target without the plugin.
   */
  createdEvent?: string
  deletedEvent?: string
}

/** Whether `record` names the create or DELETE `eventId` as the one that wrote it. */
export function namesApplied (record: EntityRecord | null, kind: 'create' | 'delete', eventId: string): boolean {
  return record !== null && (kind === 'create' ? record.createdEvent : record.deletedEvent) === eventId
}

/** A path in one canonical form: no trailing "/", each segment percent-encoded the same way. */
export function canonicalPath (path: string): string {
  const parts = path.split('/').map(canonicalSegment)
  while (parts.length > 2 && parts[parts.length - 1] === '') parts.pop()
  return parts.join('/')
}

export function canonicalSegment (segment: string): string {
  try {
    return encodeURIComponent(decodeURIComponent(segment))
  } catch {
    return segment
  }
}

/** Path of the entity `id` under the collection `type`, both in the source's terms. */
export function entityPath (type: string, id: string): string {
  return `${type}/${encodeURIComponent(id)}`
}

/** A KV token for any path: entity and type paths hold "/" and "." which a key may not. */
export function pathKey (path: string): string {
  return createHash('sha256').update(path).digest('base64url').slice(0, 43)
}

export function parseEntityRecord (value: string | null): EntityRecord | null {
  if (value === null) return null
  try {
    const r = JSON.parse(value) as EntityRecord
    return r.v === 1 && typeof r.entity === 'string' ? r : null
  } catch {
    return null
  }
}

/**
 * One region's entity records: keys `<region>.<hash of the entity path>` in the `<ns>_entities`
 * bucket (`Names.entityBucket`), one per entity created or deleted, about 200 bytes each, with no
 * TTL: a record must live as long as its entity may still be named, and a delete's tombstone as
 * long as a redelivery of it may come (see deleteNotFound).
 */
export class EntityRecords {
  readonly #records: RegionRecords

  private constructor (records: RegionRecords) {
    this.#records = records
  }

  static async open (nc: NatsConnection, n: Names, region: string, replicas: number): Promise<EntityRecords> {
    return new EntityRecords(await RegionRecords.open(nc, n.entityBucket, region, {
      replicas, description: 'regionsync: per region, what it knows of each resource (target id, created, deleted)'
    }))
  }

  async get (entity: string): Promise<EntityRecord | null> {
    return parseEntityRecord(await this.#records.get(pathKey(entity)))
  }

  async put (record: EntityRecord): Promise<void> {
    await this.#records.put(pathKey(record.entity), JSON.stringify(record))
  }

  close (): void {
    this.#records.close()
  }
}
