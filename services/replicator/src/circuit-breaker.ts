export type BreakerState = 'closed' | 'open' | 'half-open'

export interface BreakerSettings {
  /** Consecutive target-down failures that open the breaker. @default 5 */
  failureThreshold: number
  /** First wait before a probe; doubles while probes fail. @default 1000 */
  openMs: number
  /** Longest wait between probes. @default 30000 */
  maxOpenMs: number
}

export const DEFAULT_BREAKER: BreakerSettings = { failureThreshold: 5, openMs: 1000, maxOpenMs: 30_000 }

/**
 * Stops a region's replays while its target is down, instead of spending deliveries on it. Closed:
 * every replay may go. Open: none may; each partition keeps the one event it holds (max_ack_pending
 * is 1, so nothing more is pulled) until, after a wait, one probe is let through (half-open). The
 * probe's success closes the breaker and releases everyone; its failure reopens it for longer.
 * Only signs of a target that is down count (refused or timed-out connections, 502, 503, 504), not
 * one event's 500 or 4xx, so a poison event cannot stop the whole region.
 */
export class CircuitBreaker {
  readonly #s: BreakerSettings
  readonly #onChange: (state: BreakerState) => void
  #state: BreakerState = 'closed'
  #failures = 0
  #openMs: number
  #timer: NodeJS.Timeout | null = null
  #probeOut = false
  #waiters: Array<() => void> = []

  constructor (s: BreakerSettings, onChange: (state: BreakerState) => void = () => {}) {
    this.#s = s
    this.#openMs = s.openMs
    this.#onChange = onChange
  }

  get state (): BreakerState {
    return this.#state
  }

  /** Resolves when this caller may send: at once while closed, or as the probe, or when closed again. */
  async acquire (signal?: AbortSignal): Promise<void> {
    while (true) {
      if (this.#state === 'closed') return
      if (this.#state === 'half-open' && !this.#probeOut) {
        this.#probeOut = true
        return
      }
      if (signal?.aborted === true) throw signal.reason
      await new Promise<void>((resolve) => {
        const onAbort = (): void => resolve()
        signal?.addEventListener('abort', onAbort, { once: true })
        // The signal outlives this wait (one per replicator): leave no listener behind on it.
        this.#waiters.push(() => { signal?.removeEventListener('abort', onAbort); resolve() })
      })
    }
  }

  success (): void {
    this.#failures = 0
    if (this.#state !== 'closed') {
      this.#openMs = this.#s.openMs
      this.#set('closed')
    }
  }

  /** A sign the target is down. */
  failure (): void {
    this.#failures++
    if (this.#state === 'half-open' || (this.#state === 'closed' && this.#failures >= this.#s.failureThreshold)) {
      if (this.#state === 'half-open') this.#openMs = Math.min(this.#s.maxOpenMs, this.#openMs * 2)
      this.#set('open')
      this.#timer = setTimeout(() => { this.#timer = null; this.#set('half-open') }, this.#openMs)
      this.#timer.unref()
    }
  }

  /** A probe that ended neither way (an event dead-lettered, say) lets the next caller probe. */
  neutral (): void {
    if (this.#state === 'half-open') {
      this.#probeOut = false
      this.#wake()
    }
  }

  close (): void {
    if (this.#timer !== null) clearTimeout(this.#timer)
    this.#wake()
  }

  #set (state: BreakerState): void {
    this.#state = state
    this.#probeOut = false
    this.#onChange(state)
    this.#wake()
  }

  #wake (): void {
    const waiters = this.#waiters
    this.#waiters = []
    for (const w of waiters) w()
  }
}

/** Failures that say the target is down rather than that one event is bad. */
export function isTargetDown (status: number | null): boolean {
  return status === null || status === 502 || status === 503 || status === 504
}
