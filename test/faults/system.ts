import { randomBytes } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import { buildIdentityApi, type IdentityState } from '@regionsync/examples'
import { listDeadLetters, type StoredDeadLetter } from '@regionsync/replicator'
import {
  connectNats, ensureEventStream, ensurePartitionConsumer, names, parseStreamSettings, regionLag, type Names
} from '@regionsync/shared'
import type { FastifyInstance } from 'fastify'
import { SIGNING_KEY, uniqueNamespace } from '../helpers/fixtures.js'
import { ApiProcess } from '../helpers/child-process.js'
import { DelayProxy } from '../helpers/delay-proxy.js'
import { freePort } from '../helpers/nats-server.js'
import { Checker, type CheckReport } from './checker.js'
import { ACK_WAIT_MS, CONVERGE_MS, REQUEST_TIMEOUT_MS } from './durations.js'
import { FaultProxy } from './fault-proxy.js'
import { ReplicatorProcess } from './processes.js'
import { RegionApi, stateOf } from './region-api.js'
import { Workload, write, type ClientCredentials, type WorkloadOptions } from './workload.js'

export const SOURCE_REGION = 'us'
export const TARGET_REGIONS = ['eu', 'ap'] as const
export const PROJECTS = ['ops', 'dev', 'web']

const sleep = async (ms: number): Promise<void> => await new Promise((resolve) => setTimeout(resolve, ms))

export interface SystemOptions {
  /** Every NATS URL; clients fail over between them. */
  servers: string[]
  /** The source API runs as its own process (examples/dist/server.js), to be killed -9. */
  sourceProcess?: boolean
  /** Stream, consumers and buckets replicas, set through the plugin's `stream` option. @default 1 */
  replicas?: 1 | 3
  /** @default 16 */
  partitions?: number
  replicatorsPerRegion?: number
  /** @default REQUEST_TIMEOUT_MS */
  timeoutMs?: number
  /**
   * The suite makes every region's consumers first, with its short ack wait (ACK_WAIT_MS); false
   * leaves that to the replicators, with the command's defaults, as an operator who sets nothing.
   * @default true
   */
  suiteConsumers?: boolean
  /** More `regionsync replicate` flags for every instance. @default [] */
  replicatorArgs?: string[]
  /**
   * Round trip, per target region, between the region (its API's plugin and its replicators) and
   * NATS: a DelayProxy (test/helpers/delay-proxy.ts) in front of each server. One server only: a
   * cluster would tell clients its members' direct addresses. @default {}
   */
  natsRttMs?: Record<string, number>
}

interface Source {
  url: string
  /** Null when the source is a process (its data lives in its memory: a kill -9 loses it). */
  app: FastifyInstance | null
  process: ApiProcess | null
}

export interface Region {
  name: string
  api: RegionApi
  /** The region's address as its replicators have it. */
  proxy: FaultProxy
  token: string
  replicators: ReplicatorProcess[]
}

/**
 * A running regionsync deployment on loopback: the source region `us` (the identity API with the
 * plugin), target regions `eu` and `ap` (the same API with the plugin, each behind a fault proxy),
 * and `regionsync replicate` processes per target region, all on one namespace of the given NATS
 * servers. The client writes to `us` with end-user credentials; each region has its own token.
 */
export class FaultSystem {
  readonly ns = uniqueNamespace()
  readonly n: Names
  readonly checker: Checker
  readonly credentials: ClientCredentials
  readonly regions: Region[] = []
  readonly options: Required<Omit<SystemOptions, 'servers'>> & { servers: string[] }
  source!: Source
  nc!: NatsConnection
  jsm!: JetStreamManager
  readonly #cleanup: Array<() => Promise<unknown>> = []
  readonly #sourceToken = `client-bearer-${randomBytes(12).toString('hex')}`

  private constructor (o: SystemOptions) {
    this.options = { sourceProcess: false, replicas: 1, partitions: 16, replicatorsPerRegion: 2, timeoutMs: REQUEST_TIMEOUT_MS, suiteConsumers: true, replicatorArgs: [], natsRttMs: {}, ...o }
    this.n = names(this.ns)
    this.checker = new Checker(this.ns)
    this.credentials = {
      bearer: this.#sourceToken,
      xAuthToken: `client-x-auth-${randomBytes(12).toString('hex')}`,
      cookie: `session=client-cookie-${randomBytes(12).toString('hex')}`
    }
  }

  static async start (o: SystemOptions): Promise<FaultSystem> {
    const s = new FaultSystem(o)
    try {
      await s.#start()
    } catch (err) {
      await s.stop()
      throw err
    }
    return s
  }

  async #connection (servers = this.options.servers): Promise<NatsConnection> {
    const nc = await connectNats({ servers, reconnectTimeWait: 250 })
    this.#cleanup.push(async () => { if (!nc.isClosed()) await nc.close() })
    return nc
  }

  get streamSettings (): { replicas: number, partitions: number } {
    return { replicas: this.options.replicas, partitions: this.options.partitions }
  }

  async #start (): Promise<void> {
    this.nc = await this.#connection()
    this.jsm = await jetstreamManager(this.nc)
    await this.#startSource()
    // The source's plugin made the stream; check it is the one asked for.
    const info = await ensureEventStream(this.nc, this.jsm, this.n, parseStreamSettings(this.streamSettings))
    if (info.partitions !== this.options.partitions) throw new Error(`stream has ${info.partitions} partitions`)
    for (const region of this.options.suiteConsumers ? TARGET_REGIONS : []) {
      await Promise.all(Array.from({ length: this.options.partitions }, async (_, partition) =>
        await ensurePartitionConsumer(this.jsm, this.n, { region, partition, from: { kind: 'first' }, ackWaitMs: ACK_WAIT_MS, window: 256 })))
    }
    for (const name of TARGET_REGIONS) {
      const token = `${name}-region-token-${randomBytes(8).toString('hex')}`
      const servers = await this.#serversFrom(name)
      const api = await RegionApi.start({ region: name, connection: await this.#connection(servers), namespace: this.ns, token, plugin: { stream: this.streamSettings } })
      this.#cleanup.push(async () => await api.close())
      const proxy = await FaultProxy.start(api.url)
      this.#cleanup.push(async () => await proxy.close())
      const replicators = Array.from({ length: this.options.replicatorsPerRegion }, (_, index) => new ReplicatorProcess({
        region: name, target: proxy.url, token, servers, namespace: this.ns, timeoutMs: this.options.timeoutMs, index,
        extraArgs: this.options.replicatorArgs
      }))
      this.#cleanup.push(async () => { for (const r of replicators) await r.kill() })
      this.regions.push({ name, api, proxy, token, replicators })
    }
    await Promise.all(this.regions.flatMap((r) => r.replicators.map(async (p) => await p.start())))
  }

  /** The NATS URLs as region `name` reaches them: through a delay proxy each when it is far. */
  async #serversFrom (name: string): Promise<string[]> {
    const rttMs = this.options.natsRttMs[name] ?? 0
    if (rttMs === 0) return this.options.servers
    if (this.options.servers.length > 1) throw new Error('natsRttMs: one NATS server only')
    return await Promise.all(this.options.servers.map(async (url) => {
      const { hostname, port } = new URL(url)
      const proxy = await DelayProxy.start({ target: { host: hostname, port: Number(port) }, delayMs: rttMs / 2 })
      this.#cleanup.push(async () => await proxy.close())
      return `nats://${proxy.address}`
    }))
  }

  async #startSource (): Promise<void> {
    const spoolDir = await mkdtemp(join(tmpdir(), 'regionsync-faults-us-'))
    this.#cleanup.push(async () => await rm(spoolDir, { recursive: true, force: true }))
    if (this.options.sourceProcess) {
      if (this.options.replicas !== 1 || this.options.partitions !== 16) throw new Error('the source process makes a default stream')
      const proc = new ApiProcess(await freePort(), {
        REGION: SOURCE_REGION,
        NATS_URL: this.options.servers.join(','),
        REGIONSYNC_SIGNING_KEY: SIGNING_KEY,
        REGIONSYNC_NAMESPACE: this.ns,
        REGIONSYNC_SPOOL_DIR: join(spoolDir, 'spool'),
        API_TOKEN: this.#sourceToken
      })
      this.#cleanup.push(async () => await proc.kill())
      await proc.start()
      this.source = { url: proc.url, app: null, process: proc }
      return
    }
    const app = await buildIdentityApi({
      region: SOURCE_REGION,
      token: this.#sourceToken,
      regionsync: {
        region: SOURCE_REGION,
        connection: await this.#connection(),
        signingKey: SIGNING_KEY,
        namespace: this.ns,
        spool: { dir: spoolDir },
        stream: this.streamSettings
      }
    })
    this.#cleanup.push(async () => await app.close())
    const url = await app.listen({ port: 0, host: '127.0.0.1' })
    this.source = { url, app, process: null }
  }

  region (name: string): Region {
    const r = this.regions.find((x) => x.name === name)
    if (r === undefined) throw new Error(`no region ${name}`)
    return r
  }

  /** Creates the projects grants name and waits until every region has them. */
  async seedProjects (): Promise<void> {
    for (const id of PROJECTS) {
      const w = await write(this.source.url, { checker: this.checker, credentials: this.credentials }, { kind: 'create-project', id: `${this.ns}-${id}`, name: id, description: `project ${id}` })
      if (w.outcome !== 'acked') throw new Error(`creating project ${id} failed: ${w.detail ?? w.status}`)
    }
    await this.waitForRegions(30_000)
  }

  get projects (): string[] {
    return PROJECTS.map((p) => `${this.ns}-${p}`)
  }

  workload (o: Partial<Omit<WorkloadOptions, 'checker' | 'credentials' | 'url'>> = {}): Workload {
    const load = new Workload({
      url: () => this.source.url,
      checker: this.checker,
      credentials: this.credentials,
      writers: 8,
      pauseMs: 150,
      opsPerKey: 16,
      projects: this.projects,
      seed: Date.now() & 0xffffffff,
      prefix: `${this.ns}u`,
      ...o
    })
    // A test that fails midway leaves its writers running; they stop before what they write to.
    this.#cleanup.push(async () => await load.stop())
    return load
  }

  /** Events not yet applied, per region, from JetStream's consumer state. */
  async pending (regions = this.regions): Promise<Record<string, number>> {
    const out: Record<string, number> = {}
    for (const r of regions) out[r.name] = (await regionLag(this.jsm, this.n, r.name, this.options.partitions)).pending
    return out
  }

  async deadLetters (): Promise<StoredDeadLetter[]> {
    const out: StoredDeadLetter[] = []
    for (const r of this.regions) out.push(...await listDeadLetters(this.jsm, this.n, r.name))
    return out
  }

  /** The source's state when it is the reference: its data survived the run (it is not a killed process). */
  async sourceState (): Promise<IdentityState | null> {
    return this.source.process === null ? await stateOf(this.source.url) : null
  }

  /**
   * Waits until nothing is pending for any region and every region holds every acknowledged write
   * and the same data as the source (or, for a source process, as each other); bounded by
   * `timeoutMs`. Returns how long it took. `only` names the regions to wait for (default all).
   */
  async waitForRegions (timeoutMs = CONVERGE_MS, only?: string[]): Promise<number> {
    const regions = only === undefined ? this.regions : this.regions.filter((r) => only.includes(r.name))
    const started = Date.now()
    const deadline = started + timeoutMs
    let last = ''
    while (Date.now() < deadline) {
      try {
        const pending = await this.pending(regions)
        const reference = await this.sourceState()
        const states = await Promise.all(regions.map(async (r) => await r.api.state()))
        const acked = this.checker.ackedIds()
        const missing = regions.map((r) => {
          const applied = new Set(r.api.replays.filter((a) => a.handled && a.status < 300 && a.status >= 200).map((a) => a.wid))
          return acked.filter((w) => !applied.has(w)).length
        })
        const wanted = JSON.stringify(reference ?? states[0])
        const equal = states.every((s) => JSON.stringify(s) === wanted)
        last = `pending ${JSON.stringify(pending)}, acknowledged writes missing per region ${JSON.stringify(missing)}, equal ${equal}`
        if (Object.values(pending).every((p) => p === 0) && missing.every((m) => m === 0) && equal) return Date.now() - started
      } catch (err) {
        last = `error: ${(err as Error).message}`
      }
      await sleep(250)
    }
    // What the replicators said last, for whoever reads the failure: their warnings and errors.
    for (const r of this.regions) {
      for (const p of r.replicators) {
        const said = p.tail(60_000).split('\n').filter((l) => /"level":(30|40|50|60)/.test(l)).slice(-40)
        if (said.length > 0) console.error(`${p.label} last warnings:\n${said.map((l) => l.slice(0, 400)).join('\n')}`)
      }
    }
    throw new Error(`regions did not converge within ${timeoutMs} ms: ${last}`)
  }

  /** Reads every region's final state and log and checks them against the client's view. */
  async check (): Promise<CheckReport> {
    const source = await this.sourceState()
    const regions = await Promise.all(this.regions.map(async (r) => ({ name: r.name, state: await r.api.state(), replays: r.api.replays })))
    return this.checker.analyse({ regions, source })
  }

  /** Every replicator's output, for the credential scan. */
  get replicatorOutput (): string {
    return this.regions.flatMap((r) => r.replicators.map((p) => p.output)).join('\n')
  }

  async stop (): Promise<void> {
    // FAULT_DUMP_DIR=dir keeps every replicator's whole output, to trace a failing run.
    const dump = process.env.FAULT_DUMP_DIR
    if (dump !== undefined) {
      for (const r of this.regions) for (const p of r.replicators) writeFileSync(`${dump}/${p.label.replace(/[^\w]/g, '_')}.log`, p.output)
    }
    for (const fn of this.#cleanup.splice(0).reverse()) {
      try { await fn() } catch { /* the next resource still gets released */ }
    }
  }
}
