import type { EntityRecord } from './entity-records.js'
import { backoffMs, type RetrySchedule } from './retry-policy.js'

/** What a DELETE the target answered 404 (or 410) means, by the region's own records. */
export type DeleteNotFoundVerdict =
  | { kind: 'already-applied', why: 'deleted-here' | 'never-seen' }
  | { kind: 'retry', delayMs: number, reason: string }
  | { kind: 'dead', reason: 'delete-not-found', detail: string }

/**
 * A DELETE answered 404 is "already applied" only when that is true: this region applied the
 * entity's delete, or never saw it exist (no create of it was applied or taken here). When the
 * region created it and never deleted it, the 404 says the DELETE missed it: sent with an id the
 * target does not know it by (a mapping not yet seen, or lost), or under a parent translated
 * wrongly. That is retried, since the translation is redone on each attempt and a mapping another
 * instance just learnt shows up, then dead-lettered `delete-not-found`: the entity survives in
 * the region, and an operator must hear of it (I2).
 *
 * `record` is the region's record of the entity the DELETE names (EntityRecords, IdentityResolver
 * `recordOf`), `sentPath` the path that went out, `attempt` the delivery count (1 on the first).
 */
export function deleteNotFound (record: EntityRecord | null, sentPath: string, attempt: number, schedule: RetrySchedule): DeleteNotFoundVerdict {
  if (record === null || record.createdSeq === null) {
    return record?.deletedSeq != null ? { kind: 'already-applied', why: 'deleted-here' } : { kind: 'already-applied', why: 'never-seen' }
  }
  if (record.deletedSeq !== null) return { kind: 'already-applied', why: 'deleted-here' }
  const known = record.targetId === null ? 'under an id its answer did not name' : `as ${JSON.stringify(record.targetId)}`
  const detail = `target answered 404 to DELETE ${sentPath}, but this region created ${record.entity} at seq ${record.createdSeq} (${known}) and never deleted it`
  if (attempt < schedule.dependencyAttempts) return { kind: 'retry', delayMs: backoffMs(attempt, schedule), reason: detail }
  return { kind: 'dead', reason: 'delete-not-found', detail: `${detail}; gave up after ${attempt} attempts` }
}
