import { spawn, type ChildProcess } from 'node:child_process'
import { basename } from 'node:path'
import { fileURLToPath } from 'node:url'
import { request } from 'undici'
import { waitFor } from './fixtures.js'

/** The `regionsync` command as the package installs it. */
export const REGIONSYNC_BIN = fileURLToPath(new URL('../../services/replicator/bin/regionsync.js', import.meta.url))

/** The example identity API's server, as its Docker image runs it. */
export const EXAMPLE_API_SERVER = fileURLToPath(new URL('../../examples/dist/server.js', import.meta.url))

/** How much of each stream a child keeps by default: the tail, for failure messages and scans. */
export const DEFAULT_KEEP_CHARS = 1024 * 1024
/** The latest run's stderr kept for the message of a run that exits before it is ready. */
const RUN_STDERR_KEEP_CHARS = 2000

export interface Exit {
  code: number | null
  signal: NodeJS.Signals | null
}

export interface Finished extends Exit {
  stdout: string
  stderr: string
}

/** One pino line, parsed. */
export type LogEntry = Record<string, unknown> & { msg: string }

export interface NodeProcessOptions {
  /** Names the process in failure messages. @default the script and its first arguments */
  label?: string
  /** Added to PATH and HOME, the only variables taken from the shell running the tests. */
  env?: NodeJS.ProcessEnv
  /** How much of stdout, of stderr and of both interleaved is kept, over every run. @default DEFAULT_KEEP_CHARS */
  keepChars?: number
}

/**
 * A node script run as a child process, the way an operator runs it: its own environment (so no
 * REGIONSYNC_* or NATS_URL leaks in from the shell running the tests), its output kept, and its
 * pino log lines readable as they come. `spawn()` starts it, and after an exit (a kill -9, say)
 * starts it again the same way.
 */
export class NodeProcess {
  readonly label: string
  readonly args: string[]
  readonly env: NodeJS.ProcessEnv
  readonly keepChars: number
  /** The tails of every run's output so far: each stream, and both as they came. */
  stdout = ''
  stderr = ''
  output = ''
  starts = 0
  #proc: ChildProcess | null = null
  #exited: Promise<Exit> = Promise.resolve({ code: null, signal: null })
  /** The latest run's log entries, the first of each message, read as each line arrives. */
  #logs = new Map<string, LogEntry>()
  #partialLine = ''
  #runStderr = ''

  constructor (readonly script: string, args: string[] = [], options: NodeProcessOptions = {}) {
    this.args = args
    this.label = options.label ?? [basename(script), ...args.slice(0, 2)].join(' ')
    this.env = { PATH: process.env.PATH, HOME: process.env.HOME, ...options.env }
    this.keepChars = options.keepChars ?? DEFAULT_KEEP_CHARS
  }

  /** The latest run. */
  get proc (): ChildProcess {
    if (this.#proc === null) throw new Error(`${this.label} was never started`)
    return this.#proc
  }

  get running (): boolean {
    const p = this.#proc
    return p !== null && p.exitCode === null && p.signalCode === null
  }

  /** The latest run's end, once its output is all read. */
  get exited (): Promise<Exit> {
    return this.#exited
  }

  /** Starts a run: the first, or the next one after an exit. */
  spawn (): this {
    if (this.running) throw new Error(`${this.label} is running`)
    const proc = spawn(process.execPath, [this.script, ...this.args], { env: this.env, stdio: ['ignore', 'pipe', 'pipe'] })
    this.#proc = proc
    this.starts++
    this.#logs = new Map()
    this.#partialLine = ''
    this.#runStderr = ''
    proc.stdout!.setEncoding('utf8').on('data', (d: string) => {
      this.stdout = this.#keep(this.stdout, d)
      this.output = this.#keep(this.output, d)
      this.#readLogLines(d)
    })
    proc.stderr!.setEncoding('utf8').on('data', (d: string) => {
      this.stderr = this.#keep(this.stderr, d)
      // Its beginning: the line that says why comes first, a stack after it.
      if (this.#runStderr.length < RUN_STDERR_KEEP_CHARS) this.#runStderr = (this.#runStderr + d).slice(0, RUN_STDERR_KEEP_CHARS)
      this.output = this.#keep(this.output, d)
    })
    this.#exited = new Promise((resolve) => proc.once('close', (code, signal) => resolve({ code, signal })))
    return this
  }

  /** Sends a signal and returns at once: SIGSTOP freezes the process, SIGCONT wakes it, SIGTERM asks it to stop. */
  signal (signal: NodeJS.Signals): void {
    if (!this.running) throw new Error(`${this.label} is not running`)
    this.proc.kill(signal)
  }

  /** kill -9 (by default) and wait for it to be gone; nothing when it is not running. */
  async kill (signal: NodeJS.Signals = 'SIGKILL'): Promise<Exit> {
    if (this.running) this.proc.kill(signal)
    return await this.#exited
  }

  /** The end of everything it printed, for failure messages. */
  tail (chars = 2000): string {
    return this.output.slice(-chars)
  }

  /** The latest run's first pino line with this message, if it has logged one. */
  logEntry (msg: string): LogEntry | undefined {
    return this.#logs.get(msg)
  }

  /** Waits for the latest run to log `msg`; fails when it exits first or after `timeoutMs`. */
  async waitForLog (msg: string, timeoutMs = 20_000): Promise<LogEntry> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const entry = this.#logs.get(msg)
      if (entry !== undefined) return entry
      // The output is all read once it has exited: the line will not come.
      const exit = await Promise.race([this.#exited, new Promise<null>((resolve) => setTimeout(() => resolve(null), 50))])
      if (exit !== null && this.#logs.get(msg) === undefined) {
        // Why it exited is on its stderr, after any log lines; a failure's first line (all that a
        // summary of a long run keeps) says it.
        const why = this.#runStderr.trim().replaceAll('\n', ' | ')
        throw new Error(`${this.label} exited (${exit.code ?? exit.signal}) without logging "${msg}"; stderr: ${why === '' ? '(nothing)' : why}\noutput: ${this.tail()}`)
      }
      if (Date.now() > deadline) throw new Error(`${this.label} did not log "${msg}" within ${timeoutMs} ms: ${this.tail()}`)
    }
  }

  /** A number field of the latest run's line `msg`, such as the port of "metrics listening". */
  async logNumber (msg: string, field: string, timeoutMs = 20_000): Promise<number> {
    const value = (await this.waitForLog(msg, timeoutMs))[field]
    if (typeof value !== 'number') throw new Error(`${this.label} logged "${msg}" without a number ${field}: ${JSON.stringify(this.logEntry(msg))}`)
    return value
  }

  #keep (kept: string, more: string): string {
    return (kept + more).slice(-this.keepChars)
  }

  /** Each whole line as it arrives, so the kept tail never moves past a line before it is read. */
  #readLogLines (chunk: string): void {
    const lines = (this.#partialLine + chunk).split('\n')
    this.#partialLine = lines.pop() ?? ''
    for (const line of lines) {
      if (!line.startsWith('{')) continue
      let entry: LogEntry | null
      try {
        entry = JSON.parse(line)
      } catch {
        continue
      }
      if (typeof entry?.msg === 'string' && !this.#logs.has(entry.msg)) this.#logs.set(entry.msg, entry)
    }
  }
}

/** A `regionsync` process (services/replicator/bin/regionsync.js). */
export class RegionsyncProcess extends NodeProcess {
  constructor (args: string[], options: NodeProcessOptions = {}) {
    super(REGIONSYNC_BIN, args, { label: `regionsync ${args.slice(0, 3).join(' ')}`, ...options })
  }

  /** The port of the latest run's pino line "metrics listening". */
  async metricsPort (timeoutMs = 20_000): Promise<number> {
    return await this.logNumber('metrics listening', 'port', timeoutMs)
  }
}

/**
 * The example API (examples/dist/server.js) as a region's own process, on 127.0.0.1:`port`, which a
 * test may kill -9 and start again the same way (same port, same spool directory).
 */
export class ApiProcess extends NodeProcess {
  constructor (readonly port: number, env: NodeJS.ProcessEnv) {
    super(EXAMPLE_API_SERVER, [], { label: `API on ${port}`, env: { HOST: '127.0.0.1', PORT: String(port), LOG_LEVEL: 'warn', ...env } })
  }

  get url (): string {
    return `http://127.0.0.1:${this.port}`
  }

  /** Starts a run and waits for its /healthz. */
  async start (): Promise<void> {
    this.spawn()
    await waitFor(`${this.label} /healthz`, async () => {
      if (!this.running) throw new Error(`${this.label} exited with ${this.proc.exitCode ?? this.proc.signalCode}: ${this.tail()}`)
      const res = await request(`${this.url}/healthz`)
      await res.body.dump()
      return res.statusCode === 200
    }, 20_000).catch((err: Error) => { throw new Error(`${err.message}; its output: ${this.tail()}`) })
  }
}

/** Runs a `regionsync` command to its end; one that hangs is killed after `timeoutMs` and fails, saying so. */
export async function runRegionsync (args: string[], options: { env?: NodeJS.ProcessEnv, timeoutMs?: number } = {}): Promise<Finished> {
  const timeoutMs = options.timeoutMs ?? 15_000
  const child = new RegionsyncProcess(args, options.env !== undefined ? { env: options.env } : {}).spawn()
  let hung = false
  const timer = setTimeout(() => { hung = true; child.proc.kill('SIGKILL') }, timeoutMs)
  const exit = await child.exited
  clearTimeout(timer)
  if (hung) throw new Error(`regionsync ${args.join(' ')} did not exit within ${timeoutMs} ms; stderr: ${child.stderr}`)
  return { ...exit, stdout: child.stdout, stderr: child.stderr }
}
