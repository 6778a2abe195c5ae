import { spawn, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { request } from 'undici'
import { SIGNING_KEY, waitFor } from '../helpers/fixtures.js'

const REGIONSYNC = fileURLToPath(new URL('../../services/replicator/bin/regionsync.js', import.meta.url))
const API_SERVER = fileURLToPath(new URL('../../examples/dist/server.js', import.meta.url))

/** Everything a child printed is kept up to this, for failure messages and the credential scan. */
const OUTPUT_KEEP_CHARS = 8 * 1024 * 1024

/** A child process of this suite, which a fault may kill -9 and start again the same way. */
class Child {
  proc: ChildProcess | null = null
  /** Output of every run so far (the credential scan reads it all). */
  output = ''
  starts = 0

  constructor (readonly label: string, readonly args: string[], readonly env: NodeJS.ProcessEnv) {}

  get running (): boolean {
    const p = this.proc
    return p !== null && p.exitCode === null && p.signalCode === null
  }

  spawn (): ChildProcess {
    if (this.running) throw new Error(`${this.label} is running`)
    const proc = spawn(process.execPath, this.args, { env: this.env, stdio: ['ignore', 'pipe', 'pipe'] })
    this.proc = proc
    this.starts++
    const keep = (d: string): void => { this.output = (this.output + d).slice(-OUTPUT_KEEP_CHARS) }
    proc.stdout!.setEncoding('utf8').on('data', keep)
    proc.stderr!.setEncoding('utf8').on('data', keep)
    return proc
  }

  /** Sends a signal and returns at once: SIGSTOP freezes the process, SIGCONT wakes it. */
  signal (signal: NodeJS.Signals): void {
    if (!this.running) throw new Error(`${this.label} is not running`)
    this.proc?.kill(signal)
  }

  /** kill -9 (by default) and wait for it to be gone. */
  async kill (signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const proc = this.proc
    if (proc === null || !this.running) return
    const exited = new Promise((resolve) => proc.once('exit', resolve))
    proc.kill(signal)
    await exited
  }

  tail (chars = 2000): string {
    return this.output.slice(-chars)
  }
}

/** The port in the pino line "metrics listening" of the latest run, once it is there. */
function metricsPortIn (output: string): number | undefined {
  let port: number | undefined
  for (const line of output.split('\n')) {
    if (!line.startsWith('{') || !line.includes('metrics listening')) continue
    try {
      const entry = JSON.parse(line) as { msg?: string, port?: number }
      if (entry.msg === 'metrics listening') port = entry.port
    } catch {
      // Not a whole line yet.
    }
  }
  return port
}

/** One `regionsync replicate` instance, as an operator runs it. */
export class ReplicatorProcess extends Child {
  #runStartsAt = 0

  constructor (opts: { region: string, target: string, token: string, servers: string[], namespace: string, timeoutMs: number, index: number, extraArgs?: string[] }) {
    super(`replicator ${opts.region}#${opts.index}`, [REGIONSYNC, 'replicate',
      '--region', opts.region, '--target', opts.target, '--nats', opts.servers.join(','),
      '--signing-key', SIGNING_KEY, '--target-token', opts.token, '--namespace', opts.namespace,
      '--timeout-ms', String(opts.timeoutMs), '--metrics-port', '0', '--metrics-host', '127.0.0.1',
      ...(opts.extraArgs ?? [])
    ], { PATH: process.env.PATH, HOME: process.env.HOME, LOG_LEVEL: process.env.FAULT_LOG_LEVEL ?? 'info' })
  }

  /** Starts it and waits until it says it is ready (connected and consuming). */
  async start (): Promise<void> {
    this.#runStartsAt = this.output.length
    const proc = this.spawn()
    const port = await waitFor(`${this.label} to listen (output: ${this.tail(500)})`, () => {
      if (proc.exitCode !== null) throw new Error(`${this.label} exited with ${proc.exitCode}: ${this.tail()}`)
      return metricsPortIn(this.output.slice(this.#runStartsAt))
    }, 30_000)
    await waitFor(`${this.label} /readyz`, async () => {
      const res = await request(`http://127.0.0.1:${port}/readyz`)
      await res.body.dump()
      return res.statusCode === 200
    }, 30_000)
  }
}

/** The example API (examples/dist/server.js) as the source region's own process. */
export class ApiProcess extends Child {
  constructor (readonly port: number, env: NodeJS.ProcessEnv) {
    super(`API on ${port}`, [API_SERVER], { PATH: process.env.PATH, HOST: '127.0.0.1', PORT: String(port), LOG_LEVEL: 'warn', ...env })
  }

  get url (): string {
    return `http://127.0.0.1:${this.port}`
  }

  async start (): Promise<void> {
    const proc = this.spawn()
    await waitFor(`${this.label} /healthz`, async () => {
      if (proc.exitCode !== null) throw new Error(`${this.label} exited with ${proc.exitCode}: ${this.tail()}`)
      const res = await request(`${this.url}/healthz`)
      await res.body.dump()
      return res.statusCode === 200
    }, 20_000).catch((err: Error) => { throw new Error(`${err.message}; its output: ${this.tail()}`) })
  }
}

/** Runs a `regionsync` command to its end (killed after `timeoutMs`); its exit code and output. */
export async function runRegionsync (args: string[], timeoutMs = 30_000): Promise<{ code: number | null, stdout: string, stderr: string }> {
  const proc = spawn(process.execPath, [REGIONSYNC, ...args], { env: { PATH: process.env.PATH, HOME: process.env.HOME }, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  proc.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d })
  proc.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d })
  const timer = setTimeout(() => proc.kill('SIGKILL'), timeoutMs)
  const code = await new Promise<number | null>((resolve) => proc.once('close', (c) => resolve(c)))
  clearTimeout(timer)
  return { code, stdout, stderr }
}
