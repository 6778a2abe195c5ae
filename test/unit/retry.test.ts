import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { retryUntil } from '@regionsync/shared'
import { DEFAULT_RETRY, backoffMs, classify, retryAfterMs } from '../../services/replicator/src/retry-policy.js'

describe('retryUntil', () => {
  beforeEach(() => { vi.useFakeTimers() })
  afterEach(() => { vi.useRealTimers() })

  it('calls again after each failure, waiting what delayMs says, until the call resolves', async () => {
    const calls: number[] = []
    const retried: number[] = []
    const done = retryUntil(async (attempt) => {
      calls.push(Date.now())
      if (attempt < 3) throw new Error(`fail ${attempt}`)
      return attempt
    }, { delayMs: (attempt) => attempt * 100, onRetry: (_err, attempt) => { retried.push(attempt) } })
    await vi.runAllTimersAsync()
    expect(await done).toBe(3)
    expect(calls.map((t) => t - (calls[0] as number))).toEqual([0, 100, 300])
    expect(retried).toEqual([1, 2])
  })

  it('rethrows the first error retryable refuses, without waiting', async () => {
    let calls = 0
    const done = retryUntil(async () => { calls++; throw new Error(`fail ${calls}`) }, {
      retryable: (_err, attempt) => attempt < 2,
      delayMs: () => 1000
    })
    const failed = expect(done).rejects.toThrow('fail 2')
    await vi.runAllTimersAsync()
    await failed
    expect(calls).toBe(2)
  })

  it('waits with the sleep it is given (a worker that must wake early on shutdown)', async () => {
    const slept: number[] = []
    let calls = 0
    const result = await retryUntil(async () => { if (++calls === 1) throw new Error('once'); return 'ok' }, {
      delayMs: () => 250,
      sleep: async (ms) => { slept.push(ms) }
    })
    expect(result).toBe('ok')
    expect(slept).toEqual([250])
  })
})

describe('retry policy: backoff and what an answer means', () => {
  it('backs off exponentially with equal jitter, capped at maxDelayMs', () => {
    const s = { ...DEFAULT_RETRY, baseDelayMs: 100, maxDelayMs: 1000 }
    expect([1, 2, 3, 4, 5, 6].map((a) => backoffMs(a, s, () => 0))).toEqual([50, 100, 200, 400, 500, 500])
    expect([1, 2, 3, 4, 5, 6].map((a) => backoffMs(a, s, () => 1))).toEqual([100, 200, 400, 800, 1000, 1000])
    // A huge attempt count neither overflows nor exceeds the cap.
    expect(backoffMs(10_000, s, () => 1)).toBe(1000)
  })

  it('reads Retry-After as seconds or as an HTTP date', () => {
    const now = Date.parse('2026-01-01T00:00:00Z')
    expect(retryAfterMs('3', now)).toBe(3000)
    expect(retryAfterMs('Thu, 01 Jan 2026 00:00:10 GMT', now)).toBe(10_000)
    expect(retryAfterMs('Wed, 31 Dec 2025 00:00:00 GMT', now)).toBe(0)
    expect(retryAfterMs(undefined, now)).toBeNull()
    expect(retryAfterMs('soon', now)).toBeNull()
  })

  it('retries 5xx, 408 and 429 (429 and 503 after their Retry-After), counts 404 on DELETE and 409 on POST as applied, rejects other 4xx', () => {
    const s = DEFAULT_RETRY
    expect(classify('POST', 201, {}, 1, s)).toEqual({ kind: 'applied', status: 201 })
    expect(classify('DELETE', 404, {}, 1, s)).toEqual({ kind: 'already-applied', status: 404 })
    expect(classify('POST', 409, {}, 1, s)).toEqual({ kind: 'already-applied', status: 409 })
    expect(classify('PUT', 429, { 'retry-after': '7' }, 1, s)).toMatchObject({ kind: 'retry', delayMs: 7000 })
    expect(classify('PUT', 503, { 'retry-after': '2' }, 1, s)).toMatchObject({ kind: 'retry', delayMs: 2000 })
    expect(classify('PUT', 500, {}, 1, s)).toMatchObject({ kind: 'retry', reason: 'target answered 500' })
    expect(classify('PUT', 408, {}, 1, s)).toMatchObject({ kind: 'retry' })
    expect(classify('PATCH', 422, {}, 1, s)).toEqual({ kind: 'reject', status: 422, reason: 'target answered 422' })
  })

  it('gives a write answered 404 dependencyAttempts tries (a resource it names may not be applied yet), then rejects it', () => {
    const s = { ...DEFAULT_RETRY, dependencyAttempts: 3 }
    expect(classify('PUT', 404, {}, 2, s).kind).toBe('retry')
    expect(classify('PUT', 404, {}, 3, s)).toMatchObject({ kind: 'reject', status: 404 })
  })
})
