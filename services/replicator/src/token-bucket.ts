/** How much of a second's allowance may go out at once. */
const BURST_SECONDS = 0.1

/**
 * A token bucket: at most about `perSecond` replays in any one second. A bucket a whole second
 * deep would let a full second's burst out and then refill another second's worth within that same
 * second, twice the limit; a tenth of a second deep keeps every one-second window within a tenth
 * over it and still absorbs timer slack at high rates. Waiters are served in order.
 */
export class TokenBucket {
  readonly #perSecond: number
  readonly #burst: number
  #tokens: number
  #last = performance.now()
  #queue: Promise<void> = Promise.resolve()

  constructor (perSecond: number) {
    this.#perSecond = perSecond
    this.#burst = Math.max(1, perSecond * BURST_SECONDS)
    this.#tokens = this.#burst
  }

  async take (): Promise<void> {
    const turn = this.#queue.then(async () => await this.#takeOne())
    this.#queue = turn
    await turn
  }

  async #takeOne (): Promise<void> {
    for (;;) {
      const now = performance.now()
      this.#tokens = Math.min(this.#burst, this.#tokens + ((now - this.#last) / 1000) * this.#perSecond)
      this.#last = now
      if (this.#tokens >= 1) {
        this.#tokens -= 1
        return
      }
      await new Promise((resolve) => setTimeout(resolve, Math.ceil(((1 - this.#tokens) / this.#perSecond) * 1000)))
    }
  }
}
