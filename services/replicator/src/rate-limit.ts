/**
 * A token bucket: at most `perSecond` replays a second on average, bursts up to one second's worth.
 * Waiters are served in order.
 */
export class TokenBucket {
  readonly #perSecond: number
  #tokens: number
  #last = performance.now()
  #queue: Promise<void> = Promise.resolve()

  constructor (perSecond: number) {
    this.#perSecond = perSecond
    this.#tokens = perSecond
  }

  async take (): Promise<void> {
    const turn = this.#queue.then(async () => await this.#takeOne())
    this.#queue = turn
    await turn
  }

  async #takeOne (): Promise<void> {
    for (;;) {
      const now = performance.now()
      this.#tokens = Math.min(this.#perSecond, this.#tokens + ((now - this.#last) / 1000) * this.#perSecond)
      this.#last = now
      if (this.#tokens >= 1) {
        this.#tokens -= 1
        return
      }
      await new Promise((resolve) => setTimeout(resolve, Math.ceil(((1 - this.#tokens) / this.#perSecond) * 1000)))
    }
  }
}

/** At most `limit` holders at once; the rest wait in order. */
export class Semaphore {
  readonly #limit: number
  #held = 0
  #waiters: Array<() => void> = []

  constructor (limit: number) {
    this.#limit = limit
  }

  async acquire (): Promise<() => void> {
    if (this.#held >= this.#limit) await new Promise<void>((resolve) => this.#waiters.push(resolve))
    else this.#held++
    let released = false
    return () => {
      if (released) return
      released = true
      const next = this.#waiters.shift()
      if (next !== undefined) next()
      else this.#held--
    }
  }
}
