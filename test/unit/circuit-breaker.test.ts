import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { CircuitBreaker, isTargetDown, type BreakerState } from '../../services/replicator/src/circuit-breaker.js'

const settings = { failureThreshold: 3, openMs: 1000, maxOpenMs: 4000 }

/** Whether `p` has settled once pending callbacks ran. */
async function settled (p: Promise<unknown>): Promise<boolean> {
  let done = false
  p.then(() => { done = true }, () => { done = true })
  await vi.advanceTimersByTimeAsync(0)
  return done
}

describe('circuit breaker', () => {
  let states: BreakerState[]
  let breaker: CircuitBreaker
  beforeEach(() => {
    vi.useFakeTimers()
    states = []
    breaker = new CircuitBreaker(settings, (s) => { states.push(s) })
  })
  afterEach(() => {
    breaker.close()
    vi.useRealTimers()
  })

  it('lets everyone through while closed; a success resets the count of failures in a row', async () => {
    breaker.failure()
    breaker.failure()
    breaker.success()
    breaker.failure()
    breaker.failure()
    expect(breaker.state).toBe('closed')
    expect(await settled(breaker.acquire())).toBe(true)
  })

  it('opens after failureThreshold failures in a row and holds callers until one probe after openMs', async () => {
    for (let i = 0; i < 3; i++) breaker.failure()
    expect(breaker.state).toBe('open')
    const a = breaker.acquire()
    const b = breaker.acquire()
    expect(await settled(a)).toBe(false)
    await vi.advanceTimersByTimeAsync(999)
    expect(await settled(a)).toBe(false)
    await vi.advanceTimersByTimeAsync(1)
    expect(breaker.state).toBe('half-open')
    // One probe only.
    expect([await settled(a), await settled(b)].filter(Boolean)).toHaveLength(1)
    breaker.success()
    expect(breaker.state).toBe('closed')
    expect(await settled(a)).toBe(true)
    expect(await settled(b)).toBe(true)
    expect(states).toEqual(['open', 'half-open', 'closed'])
  })

  it('a failed probe reopens it for twice as long, up to maxOpenMs; a success starts from openMs again', async () => {
    /** How long the next caller waits to be let through as the probe. */
    const probeWait = async (): Promise<number> => {
      const from = Date.now()
      const probe = breaker.acquire()
      await vi.runOnlyPendingTimersAsync()
      await probe
      return Date.now() - from
    }
    for (let i = 0; i < 3; i++) breaker.failure()
    const waits: number[] = []
    for (let round = 0; round < 4; round++) {
      waits.push(await probeWait())
      breaker.failure()
    }
    expect(waits).toEqual([1000, 2000, 4000, 4000])
    await probeWait()
    breaker.success()
    for (let i = 0; i < 3; i++) breaker.failure()
    expect(await probeWait()).toBe(1000)
  })

  it('a neutral probe lets the next caller probe', async () => {
    for (let i = 0; i < 3; i++) breaker.failure()
    await vi.advanceTimersByTimeAsync(1000)
    await breaker.acquire()
    const next = breaker.acquire()
    expect(await settled(next)).toBe(false)
    breaker.neutral()
    expect(await settled(next)).toBe(true)
    expect(breaker.state).toBe('half-open')
  })

  it('a waiting caller whose signal aborts is rejected with the signal\'s reason', async () => {
    for (let i = 0; i < 3; i++) breaker.failure()
    const shutdown = new AbortController()
    const waiting = breaker.acquire(shutdown.signal)
    const rejected = expect(waiting).rejects.toThrow('shutting down')
    shutdown.abort(new Error('shutting down'))
    await rejected
  })

  it('counts only signs of a target that is down', () => {
    expect([null, 502, 503, 504].every(isTargetDown)).toBe(true)
    expect([500, 404, 422, 429].some(isTargetDown)).toBe(false)
  })
})
