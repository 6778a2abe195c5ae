import { randomBytes } from 'node:crypto'

export const sleep = async (ms: number): Promise<void> => await new Promise((resolve) => setTimeout(resolve, ms))

/** A namespace no other run or section shares. */
export function uniqueNamespace (section: string): string {
  return `bench_${section}_${randomBytes(3).toString('hex')}`
}

/** Nearest-rank percentile of unsorted values; NaN when there are none. */
export function percentile (values: number[], p: number): number {
  if (values.length === 0) return Number.NaN
  const sorted = Float64Array.from(values).sort()
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))
  return sorted[rank] as number
}

export function round (n: number, digits = 2): number {
  if (!Number.isFinite(n)) return n
  const f = 10 ** digits
  return Math.round(n * f) / f
}

export const MB = 1024 * 1024

/**
 * One line on stderr saying what runs. On a terminal it is rewritten in place; elsewhere (CI,
 * a log file) each step is its own line and in-step updates are throttled.
 */
export class Progress {
  readonly #tty = process.stderr.isTTY === true
  readonly #started = Date.now()
  #step = ''
  #lastLineAt = 0

  step (text: string): void {
    this.#step = text
    this.#write(text, true)
  }

  update (detail: string): void {
    this.#write(`${this.#step}: ${detail}`, false)
  }

  done (): void {
    if (this.#tty) process.stderr.write('\r\x1b[K')
  }

  #write (text: string, force: boolean): void {
    const elapsed = `[${Math.round((Date.now() - this.#started) / 1000).toString().padStart(3)} s]`
    if (this.#tty) {
      process.stderr.write(`\r\x1b[K${elapsed} ${text}`.slice(0, (process.stderr.columns ?? 120) - 1))
      return
    }
    const now = Date.now()
    if (!force && now - this.#lastLineAt < 5000) return
    this.#lastLineAt = now
    process.stderr.write(`${elapsed} ${text}\n`)
  }
}
