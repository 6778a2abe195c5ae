import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { Semaphore } from '../../services/replicator/src/semaphore.js'
import { TokenBucket } from '../../services/replicator/src/token-bucket.js'

describe('token bucket', () => {
  beforeEach(() => { vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date', 'performance'] }) })
  afterEach(() => { vi.useRealTimers() })

  it('lets a tenth of a second\'s allowance out at once, then paces the rest to perSecond', async () => {
    const bucket = new TokenBucket(100)
    const at: number[] = []
    const start = performance.now()
    const all = Promise.all(Array.from({ length: 30 }, async () => { await bucket.take(); at.push(performance.now() - start) }))
    await vi.advanceTimersByTimeAsync(2000)
    await all
    // Ten at once (the burst), then one every 10 ms.
    expect(at.slice(0, 10).every((t) => t === 0)).toBe(true)
    expect(at[29]).toBeGreaterThanOrEqual(190)
    expect(at[29]).toBeLessThanOrEqual(210)
    // In any one second, never more than a tenth over the rate.
    for (const t of at) expect(at.filter((u) => u >= t && u < t + 1000).length).toBeLessThanOrEqual(110)
  })

  it('serves waiters in the order they came', async () => {
    const bucket = new TokenBucket(1)
    const order: number[] = []
    const all = Promise.all([1, 2, 3].map(async (i) => { await bucket.take(); order.push(i) }))
    await vi.advanceTimersByTimeAsync(5000)
    await all
    expect(order).toEqual([1, 2, 3])
  })
})

describe('semaphore', () => {
  it('holds at most limit at once, hands a released slot to the first waiter, and ignores a second release', async () => {
    const slots = new Semaphore(2)
    const a = await slots.acquire()
    await slots.acquire()
    const order: string[] = []
    const c = slots.acquire().then((release) => { order.push('c'); return release })
    const d = slots.acquire().then((release) => { order.push('d'); return release })
    await Promise.resolve()
    expect(order).toEqual([])
    a()
    a()
    await c
    await Promise.resolve()
    expect(order).toEqual(['c'])
    ;(await c)()
    await d
    expect(order).toEqual(['c', 'd'])
  })
})
