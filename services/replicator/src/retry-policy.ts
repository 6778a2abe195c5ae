/** How a replay's HTTP outcome is handled. */
export type Outcome =
  | { kind: 'applied', status: number }
  | { kind: 'already-applied', status: number }
  | { kind: 'retry', delayMs: number, reason: string }
  | { kind: 'reject', status: number, reason: string }

export interface RetrySchedule {
  /** First retry delay. @default 250 */
  baseDelayMs: number
  /** Longest delay between attempts. @default 30000 */
  maxDelayMs: number
  /** Attempts before a transiently failing event is dead-lettered; 0 retries forever. @default 0 */
  maxAttempts: number
  /**
   * Attempts a write answered 404 gets before it is dead-lettered. The source answered 2xx, so a
   * 404 here most often means a resource the write names (a grant's user) sits in another
   * partition and has not been applied yet; with the backoff, 8 attempts wait about a minute.
   * @default 8
   */
  dependencyAttempts: number
}

export const DEFAULT_RETRY: RetrySchedule = { baseDelayMs: 250, maxDelayMs: 30_000, maxAttempts: 0, dependencyAttempts: 8 }

/** Exponential backoff with "equal jitter": half fixed, half random, capped. */
export function backoffMs (attempt: number, s: RetrySchedule, random: () => number = Math.random): number {
  const exp = Math.min(s.maxDelayMs, s.baseDelayMs * 2 ** Math.min(30, Math.max(0, attempt - 1)))
  return Math.round(exp / 2 + (exp / 2) * random())
}

/** Seconds or an HTTP date, as in `Retry-After`; null when absent or unreadable. */
export function retryAfterMs (value: string | string[] | undefined, now = Date.now()): number | null {
  const v = Array.isArray(value) ? value[0] : value
  if (v === undefined || v === '') return null
  if (/^\d+$/.test(v)) return Number(v) * 1000
  const at = Date.parse(v)
  return Number.isNaN(at) ? null : Math.max(0, at - now)
}

/**
 * Statuses that mean the replay's effect is already there: a DELETE of something gone, a create of
 * something that exists. Keys are methods, `*` for any.
 */
export type AlreadyAppliedMap = Record<string, number[]>
export const DEFAULT_ALREADY_APPLIED: AlreadyAppliedMap = { DELETE: [404, 410], POST: [409] }

export function classify (
  method: string,
  status: number,
  headers: Record<string, string | string[] | undefined>,
  attempt: number,
  schedule: RetrySchedule,
  alreadyApplied: AlreadyAppliedMap = DEFAULT_ALREADY_APPLIED
): Outcome {
  if (status >= 200 && status < 300) return { kind: 'applied', status }
  if ((alreadyApplied[method] ?? []).includes(status) || (alreadyApplied['*'] ?? []).includes(status)) {
    return { kind: 'already-applied', status }
  }
  if (status >= 500 || status === 429 || status === 408) {
    const hinted = status === 429 || status === 503 ? retryAfterMs(headers['retry-after']) : null
    const delayMs = hinted === null ? backoffMs(attempt, schedule) : Math.min(hinted, schedule.maxDelayMs * 10)
    return { kind: 'retry', delayMs, reason: `target answered ${status}` }
  }
  if (status === 404 && method !== 'DELETE' && attempt < schedule.dependencyAttempts) {
    return { kind: 'retry', delayMs: backoffMs(attempt, schedule), reason: 'target answered 404; waiting for a resource this write names' }
  }
  return { kind: 'reject', status, reason: `target answered ${status}` }
}
