import { Kvm, type KV } from '@nats-io/kv'
import type { NatsConnection } from '@nats-io/transport-node'
import { RegionRecords, findCreatedId, type Logger, type Names, type RegionsyncEvent } from '@regionsync/shared'
import { deleteNotFound, type DeleteNotFoundVerdict } from './delete-not-found.js'
import { EntityRecords, canonicalPath, canonicalSegment, entityPath, namesApplied, pathKey, type EntityRecord } from './entity-records.js'
import type { RetrySchedule } from './retry-policy.js'

/**
 * An event's path in the target's terms, or why it cannot be had.
 * `unmapped`: a segment names an entity of a type whose ids this target replaces, and the region
 * has no record of the id it gave that entity. Sending the source's id would write to nothing or,
 * with integer ids, to another entity: the caller dead-letters the event `unmapped-id`.
 */
export type Translation =
  | { kind: 'ok', path: string }
  | { kind: 'unmapped', type: string, id: string, detail: string }

/**
 * What the target's plugin said of a 2xx (`x-regionsync-outcome`):
 * - `names`: it ran the handler and recorded the replay (`applied`). The entity's record then
 *   names the event, and the applied log need not (Replicator's settle).
 * - `repeat`: it had applied the event before and answered from its record (`duplicate`). The
 *   region's record may have moved on since (a redelivery or a copy of an old event): it is never
 *   moved back.
 * - `plain`: no plugin said anything; recorded as it comes, as before.
 */
export type AnswerKind = 'names' | 'plain' | 'repeat'

/** What a replayed create taught: the target's id for the entity, when its answer named one. */
export interface Learnt {
  /** The collection the entity was created in, in the source's terms. */
  type: string
  sourceId: string
  targetId: string | null
  /** The target answered another id than the source's: later paths naming it are rewritten. */
  remapped: boolean
}

/**
 * Rewrites every segment of `path` that names an entity the target knows under another id. A
 * segment is a candidate when the path before it is a type in `translating` (a collection for
 * which the target has answered another id at least once) and, when the event lists its route's
 * parameter positions (`idSegments`), it is one of them. Prefixes are compared in the source's
 * terms, so a comment under an article is found whatever the article's slug is in the target.
 * Events of types with no remapped ids cost a Set look-up per segment and no I/O.
 */
export async function translatePath (
  path: string,
  idSegments: readonly number[],
  translating: ReadonlySet<string>,
  lookup: (entity: string) => Promise<EntityRecord | null>
): Promise<Translation> {
  if (translating.size === 0) return { kind: 'ok', path }
  const parts = path.split('/')
  let prefix = ''
  let changed = false
  for (let i = 1; i < parts.length; i++) {
    const segment = canonicalSegment(parts[i] as string)
    if (segment !== '' && translating.has(prefix) && (idSegments.length === 0 || idSegments.includes(i))) {
      const entity = `${prefix}/${segment}`
      const id = decodedSegment(segment)
      const record = await lookup(entity)
      if (record === null || record.createdSeq === null || record.targetId === null) {
        const why = record === null || record.createdSeq === null
          ? 'this region has no record of its create'
          : 'its create was applied here but the target\'s answer named no id'
        return {
          kind: 'unmapped',
          type: prefix,
          id,
          detail: `${path} names ${JSON.stringify(id)} of ${prefix}, whose ids this region's target replaces, and ${why}; ` +
            `once its id there is known: regionsync ids map --type ${prefix} --source ${segment} --target <id>, then regionsync dlq replay`
        }
      }
      if (record.targetId !== id) {
        parts[i] = encodeURIComponent(record.targetId)
        changed = true
      }
    }
    prefix = `${prefix}/${segment}`
  }
  return { kind: 'ok', path: changed ? parts.join('/') : path }
}

/** A segment as an id; one that is not valid percent-encoding (canonicalSegment kept it as is) is its own id. */
function decodedSegment (segment: string): string {
  try {
    return decodeURIComponent(segment)
  } catch {
    return segment
  }
}

/** The collection a create's entity lives in: its POST path, in the source's terms. */
export function createdType (event: RegionsyncEvent): string {
  return canonicalPath(event.path)
}

/** The entity an event's path names (what a DELETE removes), in the source's terms. */
export function entityOf (event: RegionsyncEvent): string {
  return canonicalPath(event.path)
}

/**
 * What the target's answer to a replay means for identity, or `classify` when it is none of
 * identity's business (then the retry policy decides). `applied` carries what a create taught.
 */
export type AnswerVerdict =
  /** `recorded`: the entity's record now names the event as applied (a create or DELETE's 2xx). */
  | { kind: 'applied', learnt: Learnt | null, recorded: boolean }
  | DeleteNotFoundVerdict
  | { kind: 'classify' }

export interface IdentitySettings {
  replicas: number
  logger: Logger
}

/**
 * Same resource, same identity (I8) for one region, with no per-route settings: every create's
 * answer is read, and where the target gave the entity another id than the source's, that id is
 * recorded under the entity's type (the collection it was created in), so one type's integer ids
 * never rewrite another's. Later events' paths are translated on any route.
 *
 * State, in JetStream KV so every instance of the region shares it:
 * - `<ns>_entities`, `<region>.<hash of entity path>`: an EntityRecord per entity the region saw
 *   created or deleted (target id, create and delete sequences), see entity-records.ts.
 * - `<ns>_id_types`, `<region>.<hash of type>`: the type's path, once the target has replaced one
 *   of its ids. Watched, so each instance knows in memory which types need translating and reads
 *   records only for those.
 *
 * A type learnt by another instance reaches this one through the watch, a moment after it was
 * written; an event translated in that moment goes out untranslated. The marker is stored before
 * the create is acknowledged, so the entity's next event, which waits for that ack, mostly finds
 * the update delivered already; nothing orders the two deliveries, though. The net under it: a
 * DELETE that misses is retried (deleteNotFound) and other writes answered 404 get the dependency
 * retries, each attempt translated again. A PUT or PATCH to an integer id that also names another
 * entity in the target is not caught; a deployment with several instances per region that fears
 * it can run one instance while a type's first remaps are learnt.
 */
export class IdentityResolver {
  readonly #entities: EntityRecords
  readonly #types: RegionRecords
  readonly #translating = new Set<string>()
  readonly #region: string
  readonly #log: Logger
  #watch: { stop: () => void } | null = null

  private constructor (entities: EntityRecords, types: RegionRecords, region: string, log: Logger) {
    this.#entities = entities
    this.#types = types
    this.#region = region
    this.#log = log
  }

  /** Opens (creating if needed) the region's records and loads the types that translate. */
  static async open (nc: NatsConnection, n: Names, region: string, s: IdentitySettings): Promise<IdentityResolver> {
    const entities = await EntityRecords.open(nc, n, region, s.replicas)
    let types: RegionRecords
    try {
      types = await RegionRecords.open(nc, n.idTypesBucket, region, {
        replicas: s.replicas, description: 'regionsync: per region, collections whose ids the target replaces'
      })
    } catch (err) {
      entities.close()
      throw err
    }
    const r = new IdentityResolver(entities, types, region, s.logger)
    try {
      await r.#follow(await new Kvm(nc).open(n.idTypesBucket))
    } catch (err) {
      r.close()
      throw err
    }
    return r
  }

  /** Loads every type already known, then keeps watching for new ones. */
  async #follow (kv: KV): Promise<void> {
    const filter = `${this.#region}.>`
    const watch = await kv.watch({ key: filter })
    this.#watch = watch
    ;(async () => {
      for await (const e of watch) {
        if (e.operation === 'PUT') this.#translating.add(e.string())
      }
    })().catch((err) => this.#log.warn({ err }, 'watch of translating types ended'))
    // The watch delivers past values too, but gives no sign when it has; read them once here so
    // the first event after start is translated with everything other instances learnt.
    const keys = await kv.keys(filter)
    for await (const key of keys) {
      const entry = await kv.get(key)
      if (entry !== null && entry.operation === 'PUT') this.#translating.add(entry.string())
    }
  }

  /** Types (collection paths, in the source's terms) whose ids this region's target replaces. */
  get translatingTypes (): ReadonlySet<string> {
    return this.#translating
  }

  /**
   * The path to send `event` to, in the target's terms, or `unmapped`. Call before building the
   * replay, on every attempt (a mapping may have been learnt since the last one).
   */
  async translate (event: RegionsyncEvent): Promise<Translation> {
    return await translatePath(event.path, event.idSegments, this.#translating, async (entity) => await this.#entities.get(entity))
  }

  /**
   * Records what a replayed create's 2xx answer (or a 409: the entity is there) says: the id the
   * target gave the entity, found where the source's answer had it (`created.field`). When it
   * differs from the source's, the type is marked as translating before this returns, so the
   * entity's next event is translated. Call before recording the event as applied; a failure
   * (NATS) must make the event retry, or the mapping is lost.
   */
  async learn (event: RegionsyncEvent, seq: number, response: unknown, kind: AnswerKind): Promise<Learnt | null> {
    return (await this.#learn(event, seq, response, kind))?.learnt ?? null
  }

  /** `recorded`: the entity's record now names the event (kind `names`, and the record was written). */
  async #learn (event: RegionsyncEvent, seq: number, response: unknown, kind: AnswerKind): Promise<{ learnt: Learnt, recorded: boolean } | null> {
    const created = event.created
    if (created === null) return null
    const type = createdType(event)
    const targetId = created.mode === 'put' ? created.id : findCreatedId(response, created.field, false)?.id ?? null
    if (targetId === null || kind === 'repeat') {
      // A 409, or a duplicate answered without a body, for a create learnt on an earlier delivery:
      // what that delivery learnt stands. A repeat answered by the target's plugin may be a create
      // the region has seen deleted, or created again, since: the record stays as it is then.
      const prior = await this.#entities.get(entityPath(type, created.id))
      const stands = prior !== null && ((prior.createdSeq !== null && prior.deletedSeq === null) || (kind === 'repeat' && prior.deletedSeq !== null && prior.deletedSeq > seq))
      if (stands) return { learnt: { type, sourceId: created.id, targetId: prior.targetId, remapped: false }, recorded: false }
    }
    const remapped = targetId !== null && targetId !== created.id
    if (remapped && !this.#translating.has(type)) {
      await this.#types.put(pathKey(type), type)
      this.#translating.add(type)
    }
    const names = kind === 'names'
    await this.#entities.put({
      v: 1, entity: entityPath(type, created.id), targetId, createdSeq: seq, deletedSeq: null, ...(names ? { createdEvent: event.id } : {})
    })
    return { learnt: { type, sourceId: created.id, targetId, remapped }, recorded: names }
  }

  /**
   * Records that the region applied a DELETE (2xx, or a 404 deleteNotFound called already
   * applied): a later 404 for it is then known to be true.
   */
  async recordDeleted (event: RegionsyncEvent, seq: number, kind: AnswerKind): Promise<boolean> {
    const entity = entityOf(event)
    const prior = await this.#entities.get(entity)
    // A repeat of a DELETE the region has recorded already, or that a later create undid: as it is.
    if (kind === 'repeat' && prior !== null && (prior.deletedSeq !== null || (prior.createdSeq ?? -1) > seq)) return false
    await this.#entities.put({
      v: 1,
      entity,
      targetId: prior?.targetId ?? null,
      createdSeq: prior?.createdSeq ?? null,
      deletedSeq: seq,
      ...(prior?.createdEvent !== undefined ? { createdEvent: prior.createdEvent } : {}),
      ...(kind === 'names' ? { deletedEvent: event.id } : {})
    })
    return kind === 'names'
  }

  /**
   * Whether the entity's record names `event`, a create or a DELETE, as applied here; false for
   * any other event. Asked with the applied log for a redelivery or after a takeover, as a
   * replayed create or DELETE the target's guard recorded is recorded only here.
   */
  async knowsApplied (event: RegionsyncEvent): Promise<boolean> {
    if (event.created !== null) return namesApplied(await this.#entities.get(entityPath(createdType(event), event.created.id)), 'create', event.id)
    if (event.method === 'DELETE') return namesApplied(await this.#entities.get(entityOf(event)), 'delete', event.id)
    return false
  }

  /**
   * Records the region's own creates and deletes, which its replicator skips rather than replays:
   * the entity exists (or not) here under the source's own id. Without it, a DELETE from another
   * region of an entity deleted here first would look like a DELETE that missed.
   */
  async recordOwn (event: RegionsyncEvent, seq: number): Promise<void> {
    if (event.method === 'DELETE') await this.recordDeleted(event, seq, 'plain')
    else if (event.created !== null) {
      await this.#entities.put({ v: 1, entity: entityPath(createdType(event), event.created.id), targetId: event.created.id, createdSeq: seq, deletedSeq: null })
    }
  }

  /**
   * The one call after the target answered a replay (before the retry policy's classify):
   * - 2xx: learns a create's id (`learn`) or records a DELETE (`recordDeleted`); `applied`.
   * - DELETE answered 404 or 410: what the region's records say (deleteNotFound); an
   *   `already-applied` is recorded as the region's delete.
   * - POST create answered 409 (the entity is there): recorded as created, id unknown; `classify`.
   * - anything else: `classify`.
   * `sentPath` is the path that went out (translated), for the dead letter's detail.
   */
  async onAnswer (
    event: RegionsyncEvent, seq: number, sentPath: string, status: number, json: unknown, attempt: number, schedule: RetrySchedule, kind: AnswerKind = 'plain'
  ): Promise<AnswerVerdict> {
    if (status >= 200 && status < 300) {
      if (event.method === 'DELETE') return { kind: 'applied', learnt: null, recorded: await this.recordDeleted(event, seq, kind) }
      const learnt = await this.#learn(event, seq, json, kind)
      return { kind: 'applied', learnt: learnt?.learnt ?? null, recorded: learnt?.recorded === true }
    }
    if (event.method === 'DELETE' && (status === 404 || status === 410)) {
      const verdict = deleteNotFound(await this.recordOf(event), sentPath, attempt, schedule)
      // Not named as applied by this event: deleteNotFound's verdict is recorded in the applied log.
      if (verdict.kind === 'already-applied') await this.recordDeleted(event, seq, 'plain')
      return verdict
    }
    if (status === 409 && event.created !== null) await this.learn(event, seq, undefined, 'plain')
    return { kind: 'classify' }
  }

  /**
   * Records by hand the id the target knows an entity by: an operator answering an `unmapped-id`
   * letter (then `regionsync dlq replay`), or a backfill of entities created before the region
   * was replicated. `type` is the collection's path in the source's terms, as the letter names it.
   */
  async map (type: string, sourceId: string, targetId: string): Promise<void> {
    const t = canonicalPath(type)
    if (targetId !== sourceId && !this.#translating.has(t)) {
      await this.#types.put(pathKey(t), t)
      this.#translating.add(t)
    }
    // Sequence 0: no event created it here; a create replayed later overwrites this record (not one
    // the target's plugin answers from its own record: a repeat never replaces a live record).
    await this.#entities.put({ v: 1, entity: entityPath(t, sourceId), targetId, createdSeq: 0, deletedSeq: null })
  }

  /** The region's record of the entity `event`'s path names; what deleteNotFound decides on. */
  async recordOf (event: RegionsyncEvent): Promise<EntityRecord | null> {
    return await this.#entities.get(entityOf(event))
  }

  close (): void {
    this.#watch?.stop()
    this.#watch = null
    this.#entities.close()
    this.#types.close()
  }
}
