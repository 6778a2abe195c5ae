import { fork, type ChildProcess } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

/*
 * Every process the bench measures (source API, target API, replicator, baseline, raw client) runs
 * as a child of its own, so each has its own event loop and its RSS is its own. Parent and child
 * talk over the IPC channel: the child sends `{ type, ... }` messages, the parent waits for them by
 * type, always with a deadline.
 */

export interface Message {
  type: string
  [key: string]: unknown
}

const CONFIG_ENV = 'REGIONSYNC_BENCH_CHILD'
const STOP_GRACE_MS = 10_000
const live = new Set<Child>()

export class Child {
  readonly name: string
  readonly proc: ChildProcess
  readonly #queue: Message[] = []
  readonly #waiters: Array<{ type: string, resolve: (m: Message) => void }> = []
  readonly #listeners: Array<{ type: string, fn: (m: Message) => void }> = []
  readonly #exited: Promise<number | null>

  constructor (name: string, script: string, config: unknown, execArgv: string[] = []) {
    this.name = name
    this.proc = fork(fileURLToPath(new URL(script, import.meta.url)), [], {
      env: { ...process.env, [CONFIG_ENV]: JSON.stringify(config), LOG_LEVEL: process.env.LOG_LEVEL ?? 'silent' },
      execArgv,
      stdio: ['ignore', 'inherit', 'inherit', 'ipc']
    })
    live.add(this)
    this.on('error', (m) => process.stderr.write(`\n${name}: ${String(m.message)}\n`))
    this.#exited = new Promise((resolve) => this.proc.once('exit', (code) => { live.delete(this); resolve(code) }))
    this.proc.on('message', (raw) => {
      const m = raw as Message
      for (const l of this.#listeners) if (l.type === m.type) l.fn(m)
      const i = this.#waiters.findIndex((w) => w.type === m.type)
      if (i >= 0) this.#waiters.splice(i, 1)[0]?.resolve(m)
      else if (!this.#listeners.some((l) => l.type === m.type)) this.#queue.push(m)
    })
  }

  get pid (): number {
    return this.proc.pid as number
  }

  /** The next message of this type (queued or to come); rejects after `timeoutMs` or if the child dies. */
  async next<T extends Message = Message> (type: string, timeoutMs: number): Promise<T> {
    const i = this.#queue.findIndex((m) => m.type === type)
    if (i >= 0) return this.#queue.splice(i, 1)[0] as T
    return await new Promise<T>((resolve, reject) => {
      const waiter = { type, resolve: (m: Message) => { clearTimeout(timer); resolve(m as T) } }
      const timer = setTimeout(() => {
        this.#waiters.splice(this.#waiters.indexOf(waiter), 1)
        reject(new Error(`${this.name}: no "${type}" message within ${timeoutMs} ms`))
      }, timeoutMs)
      this.#waiters.push(waiter)
      this.#exited.then((code) => {
        if (!this.#waiters.includes(waiter)) return
        clearTimeout(timer)
        this.#waiters.splice(this.#waiters.indexOf(waiter), 1)
        reject(new Error(`${this.name} exited (code ${code}) before sending "${type}"`))
      }, () => {})
    })
  }

  on (type: string, fn: (m: Message) => void): void {
    this.#listeners.push({ type, fn })
  }

  send (m: Message): void {
    if (this.proc.connected) this.proc.send(m)
  }

  /** Sends a request and waits for the answer of type `reply`. */
  async ask<T extends Message = Message> (m: Message, reply: string, timeoutMs = 30_000): Promise<T> {
    const answer = this.next<T>(reply, timeoutMs)
    this.send(m)
    return await answer
  }

  /** Asks the child to stop (it closes what it opened and exits), then kills it after a grace period. */
  async stop (): Promise<number | null> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return this.proc.exitCode
    this.send({ type: 'stop' })
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), STOP_GRACE_MS)
    const code = await this.#exited
    clearTimeout(timer)
    return code
  }
}

/** Kills whatever children are still alive: the bench's last resort on error or Ctrl-C. */
export function killAllChildren (): void {
  for (const c of live) c.proc.kill('SIGKILL')
}

/** Peak and current RSS of a process, from the kernel's own accounting (bytes). */
export function procMemory (pid: number): { rss: number, hwm: number } | null {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8')
    const kb = (field: string): number => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? 0) * 1024
    return { rss: kb('VmRSS'), hwm: kb('VmHWM') }
  } catch {
    return null
  }
}

/* Child side. */

export function childConfig<T> (): T {
  const raw = process.env[CONFIG_ENV]
  if (raw === undefined) throw new Error(`run by the bench only (${CONFIG_ENV} is not set)`)
  return JSON.parse(raw) as T
}

export function toParent (m: Message): void {
  process.send?.(m)
}

/**
 * Handles the parent's messages; `stop` runs `close` (bounded) and exits. A child whose parent
 * went away exits too, so no bench process outlives the run.
 */
export function serveParent (handlers: Record<string, (m: Message) => void | Promise<void>>, close: () => Promise<void>): void {
  let stopping = false
  const stop = (code: number): void => {
    if (stopping) return
    stopping = true
    const hard = setTimeout(() => process.exit(code), 5000)
    close().then(() => { clearTimeout(hard); process.exit(code) }, () => process.exit(1))
  }
  process.on('message', (raw) => {
    const m = raw as Message
    if (m.type === 'stop') return stop(0)
    const h = handlers[m.type]
    if (h !== undefined) {
      Promise.resolve(h(m)).catch((err: unknown) => {
        toParent({ type: 'error', message: err instanceof Error ? err.stack ?? err.message : String(err) })
      })
    }
  })
  process.on('disconnect', () => stop(1))
}

/** Reports a fatal error to the parent and exits. */
export function fail (err: unknown): void {
  const m = { type: 'error', message: err instanceof Error ? err.stack ?? err.message : String(err) }
  if (process.send === undefined) {
    process.stderr.write(`${m.message}\n`)
    process.exit(1)
  }
  process.send(m, () => process.exit(1))
}
