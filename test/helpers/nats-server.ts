import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { connect as tcpConnect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { freePort } from '@regionsync/examples/free-port'
import { untilStopped } from './stopped.js'

export { freePort }

export const NATS_SERVER_BIN = process.env.NATS_SERVER_BIN ?? 'nats-server'

async function waitForPort (port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = tcpConnect(port, '127.0.0.1')
      s.once('connect', () => { s.destroy(); resolve(true) })
      s.once('error', () => resolve(false))
    })
    if (ok) return
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  throw new Error(`nats-server did not listen on ${port} within ${timeoutMs} ms`)
}

/** A real nats-server with JetStream on a free port and its own store, which a test may kill and restart. */
export class NatsServer {
  readonly port: number
  readonly storeDir: string
  /** The nats-server binary this one runs. */
  readonly bin: string
  #proc: ChildProcess | null = null

  private constructor (port: number, storeDir: string, bin: string) {
    this.port = port
    this.storeDir = storeDir
    this.bin = bin
  }

  get url (): string {
    return `nats://127.0.0.1:${this.port}`
  }

  /** `bin` picks another server line than NATS_SERVER_BIN, for tests that run on both. */
  static async start (bin: string = NATS_SERVER_BIN): Promise<NatsServer> {
    const s = new NatsServer(await freePort(), await mkdtemp(join(tmpdir(), 'regionsync-nats-')), bin)
    await s.restart()
    return s
  }

  /** Starts the server again on the same port and store. */
  async restart (): Promise<void> {
    if (this.#proc !== null) throw new Error('nats-server is running')
    const proc = spawn(this.bin, ['-js', '-a', '127.0.0.1', '-p', String(this.port), '-sd', this.storeDir], { stdio: 'ignore' })
    this.#proc = proc
    proc.once('exit', () => { if (this.#proc === proc) this.#proc = null })
    await new Promise<void>((resolve, reject) => {
      proc.once('error', (err) => reject(new Error(`cannot start ${this.bin}: ${err.message} (apt-get install nats-server)`)))
      waitForPort(this.port, 10_000).then(resolve, reject)
    })
  }

  /** Kills the server (SIGKILL by default) and waits for it to be gone. */
  async kill (signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const proc = this.#proc
    if (proc === null) return
    const exited = new Promise((resolve) => proc.once('exit', resolve))
    proc.kill(signal)
    await exited
    this.#proc = null
  }

  /**
   * SIGSTOP: the server takes what clients send into its socket and answers nothing, until thawed.
   * Resolves once every one of its threads has stopped, not merely once the signal is sent.
   */
  async freeze (): Promise<void> {
    const proc = this.#proc
    if (proc === null || proc.pid === undefined) throw new Error('nats-server is not running')
    proc.kill('SIGSTOP')
    await untilStopped(proc.pid)
  }

  /** SIGCONT: it reads and serves what waited meanwhile, late. */
  thaw (): void {
    this.#proc?.kill('SIGCONT')
  }

  async stop (): Promise<void> {
    this.thaw()
    await this.kill('SIGTERM')
    await rm(this.storeDir, { recursive: true, force: true })
  }
}
