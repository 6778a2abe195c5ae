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
