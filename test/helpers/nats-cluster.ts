import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { connect } from '@nats-io/transport-node'
import { NATS_SERVER_BIN, freePort } from './nats-server.js'

interface Node {
  name: string
  port: number
  clusterPort: number
  storeDir: string
  proc: ChildProcess | null
}

/**
 * Three real nats-servers on loopback, routed to each other as one JetStream cluster, each with its
 * own store, any of which a test may kill -9 and restart. This is how regionsync scales past one
 * machine: streams and consumers at 3 replicas survive the loss of one server.
 */
export class NatsCluster {
  readonly nodes: Node[]
  readonly #dir: string

  private constructor (nodes: Node[], dir: string) {
    this.nodes = nodes
    this.#dir = dir
  }

  /** Every client URL, for a connection that fails over between them. */
  get servers (): string[] {
    return this.nodes.map((n) => `nats://127.0.0.1:${n.port}`)
  }

  static async start (size = 3): Promise<NatsCluster> {
    const dir = await mkdtemp(join(tmpdir(), 'regionsync-cluster-'))
    const nodes: Node[] = []
    for (let i = 0; i < size; i++) {
      nodes.push({ name: `n${i + 1}`, port: await freePort(), clusterPort: await freePort(), storeDir: join(dir, `n${i + 1}`), proc: null })
    }
    const cluster = new NatsCluster(nodes, dir)
    for (const n of nodes) cluster.#spawn(n)
    await cluster.waitForMeta()
    return cluster
  }

  #spawn (n: Node): void {
    const routes = this.nodes.filter((o) => o !== n).map((o) => `nats-route://127.0.0.1:${o.clusterPort}`).join(',')
    const proc = spawn(NATS_SERVER_BIN, [
      '-js', '-a', '127.0.0.1', '-p', String(n.port), '-sd', n.storeDir, '-n', n.name,
      '--cluster_name', 'regionsync-test', '--cluster', `nats://127.0.0.1:${n.clusterPort}`, '--routes', routes
    ], { stdio: 'ignore' })
    n.proc = proc
    proc.once('exit', () => { if (n.proc === proc) n.proc = null })
  }

  /** Waits until JetStream answers through `via` (or any node): the meta leader is elected. */
  async waitForMeta (timeoutMs = 20_000, via?: Node): Promise<void> {
    const deadline = Date.now() + timeoutMs
    const urls = via === undefined ? this.servers : [`nats://127.0.0.1:${via.port}`]
    while (Date.now() < deadline) {
      try {
        const nc = await connect({ servers: urls, timeout: 500, reconnect: false })
        try {
          const r = await nc.request('$JS.API.INFO', '', { timeout: 1000 })
          const info = r.json<{ error?: unknown }>()
          if (info.error === undefined) return
        } finally {
          await nc.close()
        }
      } catch {
        // Not yet.
      }
      await new Promise((resolve) => setTimeout(resolve, 200))
    }
    throw new Error(`JetStream cluster not ready within ${timeoutMs} ms`)
  }

  async kill (node: Node): Promise<void> {
    const proc = node.proc
    if (proc === null) return
    const exited = new Promise((resolve) => proc.once('exit', resolve))
    proc.kill('SIGKILL')
    await exited
    node.proc = null
  }

  /** Restarts a killed node on its own store and waits until JetStream answers through it. */
  async restart (node: Node): Promise<void> {
    if (node.proc !== null) throw new Error(`${node.name} is running`)
    this.#spawn(node)
    await this.waitForMeta(30_000, node)
  }

  async stop (): Promise<void> {
    for (const n of this.nodes) await this.kill(n)
    await rm(this.#dir, { recursive: true, force: true })
  }
}
