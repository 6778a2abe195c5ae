/** How `retryUntil` decides, waits and reports; every field optional. */
export interface RetryUntilOptions {
  /** Whether to try again after `err` (`attempt` is the one that failed, from 1); false rethrows it. @default always */
  retryable?: (err: unknown, attempt: number) => boolean
  /** Wait after failed attempt `attempt`, before the next. @default 0 */
  delayMs?: (attempt: number) => number
  /** Told of each failure that will be retried, before the wait (to log it). */
  onRetry?: (err: unknown, attempt: number) => void
  /** How to wait; a caller that must wake early on shutdown passes its own. @default setTimeout */
  sleep?: (ms: number) => Promise<void>
}

const timerSleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }

/**
 * Calls `fn` until it resolves, or throws an error `retryable` refuses (then that error). The one
 * retry loop of the project: what to retry, how long to wait and what to log are the caller's.
 */
export async function retryUntil<T> (fn: (attempt: number) => Promise<T>, o: RetryUntilOptions = {}): Promise<T> {
  const sleep = o.sleep ?? timerSleep
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn(attempt)
    } catch (err) {
      if (o.retryable !== undefined && !o.retryable(err, attempt)) throw err
      o.onRetry?.(err, attempt)
      const ms = o.delayMs?.(attempt) ?? 0
      if (ms > 0) await sleep(ms)
    }
  }
}
