import { decodeEvent, type RegionsyncEvent, type Signer } from '@regionsync/shared'
import type { DeadLetterReason } from './dead-letter.js'
import { backoffMs, classify, retryAfterMs, type AlreadyAppliedMap, type RetrySchedule } from './retry-policy.js'

/**
 * Header with which the target's plugin says what it made of a replay: applied and recorded,
 * answered from its record (duplicate), older than what it has for the resource (superseded)...
 */
export const REPLAY_OUTCOME_HEADER = 'x-regionsync-outcome'

export type DeadVerdict = { kind: 'dead', reason: DeadLetterReason, detail: string, status: number | null, excerpt: string }

/** What to do with one event, whatever carried it (the stream, or a dead-letter replay). */
export type Verdict =
  /** `entityRecorded`: the entity's record names the event as applied; the applied log need not. */
  | { kind: 'done', outcome: 'applied' | 'already-applied' | 'own-origin' | 'superseded', entityRecorded?: true }
  | { kind: 'retry', delayMs: number, reason: string }
  | DeadVerdict

export function dead (reason: DeadLetterReason, detail: string, status: number | null = null, excerpt = ''): DeadVerdict {
  return { kind: 'dead', reason, detail, status, excerpt }
}

/**
 * What an event's bytes allow before anything is sent: a replay, or a verdict. Decoding comes
 * first so a dead letter can say what the event was; nothing unsigned is looked at further.
 */
export function admit (data: Uint8Array, signature: string | undefined, region: string, signer: Signer, decoded?: RegionsyncEvent | null): { kind: 'replay', event: RegionsyncEvent } | Verdict {
  let event: RegionsyncEvent
  try {
    // Decoded already when it arrived, unless it could not be: decoding again says why.
    event = decoded ?? decodeEvent(data)
  } catch (err) {
    return dead('malformed', (err as Error).message)
  }
  try {
    signer.verifyEvent(data, signature)
  } catch (err) {
    return dead('bad-signature', (err as Error).message)
  }
  if (event.origin === region) return { kind: 'done', outcome: 'own-origin' }
  return { kind: 'replay', event }
}

/** What came back from one replay: a status, or why there was none. */
export interface Sent {
  status: number | null
  headers: Record<string, string | string[] | undefined>
  excerpt: string
  /** Why there is no status (refused, timed out); null with a status. */
  failure: string | null
  /** The replay was cut short by shutdown: hand it back at once. */
  aborted: boolean
}

export interface JudgeSettings {
  retry: RetrySchedule
  alreadyApplied: AlreadyAppliedMap
}

/** What the target's answer to attempt `attempt` of a replay means. */
export function judge (method: string, sent: Sent, attempt: number, s: JudgeSettings, random?: () => number): Verdict {
  if (sent.status === null) {
    return retryOrGiveUp({ kind: 'retry', delayMs: sent.aborted ? 0 : backoffMs(attempt, s.retry, random), reason: sent.failure ?? 'request failed' }, attempt, s)
  }
  const outcome = headerValue(sent.headers[REPLAY_OUTCOME_HEADER])
  if (sent.status === 208 && outcome === 'superseded') return { kind: 'done', outcome: 'superseded' }
  // The target's plugin is still running an earlier delivery of this very replay (the IETF
  // Idempotency-Key draft's 409): its result is not known yet, so this is no "already applied".
  if (sent.status === 409 && outcome === 'in-progress') {
    const hinted = retryAfterMs(sent.headers['retry-after'])
    return retryOrGiveUp({ kind: 'retry', delayMs: hinted ?? backoffMs(attempt, s.retry, random), reason: 'target is still applying an earlier delivery of this replay' }, attempt, s)
  }
  const o = classify(method, sent.status, sent.headers, attempt, s.retry, s.alreadyApplied)
  switch (o.kind) {
    case 'applied': return { kind: 'done', outcome: 'applied' }
    case 'already-applied': return { kind: 'done', outcome: 'already-applied' }
    case 'retry': return retryOrGiveUp(o, attempt, s)
    case 'reject': return dead('rejected', o.reason, o.status, sent.excerpt)
  }
}

function retryOrGiveUp (v: Verdict & { kind: 'retry' }, attempt: number, s: JudgeSettings): Verdict {
  if (s.retry.maxAttempts > 0 && attempt >= s.retry.maxAttempts) return dead('too-many-attempts', `${v.reason} after ${attempt} attempts`)
  return v
}

function headerValue (v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v
}
