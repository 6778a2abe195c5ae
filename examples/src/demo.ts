import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdirSync, rmSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { jetstreamManager } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import { Replicator, formatVerifyReport, parseVerifyConfig, runVerify, startMetricsServer, type MetricsServer } from '@regionsync/replicator'
import { connectNats, createLogger, names, regionLag, type Logger, type RegionLag } from '@regionsync/shared'
import type { FastifyInstance } from 'fastify'
import { request } from 'undici'
import { freePort } from './free-port.js'
import { buildIdentityApi, type IdentityState } from './identity-api.js'
import { identityVerifyConfig } from './verify-config.js'

interface Io { out: (line: string) => void, err: (line: string) => void, env: Record<string, string | undefined> }

const SOURCE = 'us'
const TARGETS = ['eu', 'ap'] as const
const INSTANCES_PER_REGION = 2
/**
 * Where each region's dashboard and /metrics are served: eu on the replicator's default port, so
 * the README's `http://localhost:9464/` is the demo's; a port in use falls back to a free one.
 */
const DASHBOARD_PORTS: Record<string, number> = { eu: 9464, ap: 9465 }
const CONCURRENCY = 16
const INSTALL_HINT = 'nats-server not found: install it with `apt-get install nats-server` (Debian/Ubuntu), `brew install nats-server` (macOS), or run `docker compose up nats`'
const DATA_DIR = fileURLToPath(new URL('../../.data/', import.meta.url))

/**
 * `regionsync demo`: a source API and two target regions, each region's API with the plugin and
 * two replicator instances, a burst of writes, a live lag table, and a check that every region's
 * data equals the source's. `--once` exits with 0 only when every region matches.
 */
export async function runDemo (args: string[], io: Io): Promise<number> {
  const { values } = parseArgs({ args, options: { once: { type: 'boolean' }, users: { type: 'string', default: '200' }, nats: { type: 'string' } } })
  const users = Number(values.users)
  if (!Number.isInteger(users) || users < 1 || users > 100_000) {
    io.err('regionsync: --users: expects a whole number from 1 to 100000')
    return 2
  }
  const log = createLogger({ level: io.env.LOG_LEVEL ?? 'silent' })
  const nats = await natsFor(values.nats ?? io.env.NATS_URL, io)
  if (nats === null) return 1
  const namespace = `demo_${randomBytes(4).toString('hex')}`
  const signingKey = randomBytes(32).toString('hex')
  const apps: FastifyInstance[] = []
  const replicators: Replicator[] = []
  const dashboards: MetricsServer[] = []
  try {
    io.out(`regionsync demo: NATS at ${nats.url}${nats.started ? ' (started for the demo)' : ''}, namespace ${namespace}`)
    const api = async (region: string, token?: string): Promise<string> => {
      const spool = { dir: `${DATA_DIR}${namespace}/spool-${region}` }
      const app = await buildIdentityApi({ region, ...(token !== undefined ? { token } : {}), regionsync: { region, connection: nats.nc, signingKey, namespace, spool } })
      apps.push(app)
      return await app.listen({ port: 0, host: '127.0.0.1' })
    }
    const sourceUrl = await api(SOURCE)
    const targets: Array<{ region: string, url: string }> = []
    for (const region of TARGETS) {
      const token = randomBytes(16).toString('hex')
      const url = await api(region, token)
      targets.push({ region, url })
      for (let i = 0; i < INSTANCES_PER_REGION; i++) {
        replicators.push(await Replicator.start({
          region, target: url, targetToken: token, signingKey, connection: nats.nc, logger: log, namespace, instance: `${region}-${i + 1}`
        }))
      }
    }
    io.out(`source ${SOURCE} ${sourceUrl}; ${targets.map((t) => `${t.region} ${t.url}`).join('; ')}; ${INSTANCES_PER_REGION} replicators per region`)
    for (const region of TARGETS) {
      const first = replicators.find((r) => r.region === region) as Replicator
      const server = await dashboardOf(first, DASHBOARD_PORTS[region] ?? 0, log)
      dashboards.push(server)
      io.out(`${region} lag dashboard http://127.0.0.1:${server.port}/  metrics http://127.0.0.1:${server.port}/metrics`)
    }
    io.out(`every region's lag from a shell: npx regionsync status --nats ${nats.url} --namespace ${namespace}`)

    const jsm = await jetstreamManager(nats.nc)
    const n = names(namespace)
    const partitions = replicators[0]?.partitions ?? 1
    const table = new LiveTable(io)
    const lags = async (): Promise<RegionLag[]> => await Promise.all(TARGETS.map(async (r) => await regionLag(jsm, n, r, partitions)))
    const applied = (region: string): number => replicators.filter((r) => r.region === region).reduce((sum, r) => sum + r.counts.applied, 0)

    const started = Date.now()
    let writes = 0
    const ticker = setInterval(() => { lags().then((l) => table.draw(l, applied, writes), () => {}) }, 250)
    try {
      writes = await burst(sourceUrl, users, () => { writes++ })
      const wroteMs = Date.now() - started
      let current = await lags()
      while (current.some((l) => l.pending > 0)) {
        await new Promise((resolve) => setTimeout(resolve, 100))
        current = await lags()
      }
      const caughtUpMs = Date.now() - started
      clearInterval(ticker)
      table.draw(current, applied, writes)
      io.out(`${writes} writes in ${(wroteMs / 1000).toFixed(2)} s (${Math.round(writes / (wroteMs / 1000))} writes/s); every region caught up ${((caughtUpMs - wroteMs) / 1000).toFixed(2)} s after the last write`)
    } finally {
      clearInterval(ticker)
    }

    const expected = await fetchState(sourceUrl)
    let allMatch = true
    for (const t of targets) {
      const got = await fetchState(t.url)
      const same = JSON.stringify(got) === JSON.stringify(expected)
      allMatch &&= same
      io.out(`${t.region}: ${got.users.length} users, ${got.projects.length} projects, ${got.grants.length} grants: ${same ? `equal to ${SOURCE}` : `DIFFERENT from ${SOURCE} (${SOURCE} has ${expected.users.length} users, ${expected.projects.length} projects, ${expected.grants.length} grants)`}`)
    }
    io.out(allMatch ? 'every region matches the source' : 'some region does not match the source')
    // The same question the way an operator asks it of real regions: through the APIs' own reads.
    io.out('')
    io.out('$ regionsync verify --config examples/verify.json')
    const verified = await runVerify({
      config: parseVerifyConfig(identityVerifyConfig(SOURCE, Object.fromEntries([[SOURCE, { url: sourceUrl }], ...targets.map((t) => [t.region, { url: t.url }])]))),
      nats: { jsm, names: n, partitions },
      repair: false,
      dryRun: false,
      maxRepairs: 0,
      logger: log
    })
    for (const line of formatVerifyReport(verified)) io.out(line)
    allMatch &&= verified.clean
    if (values.once !== true) {
      io.out(`still running: try \`curl ${sourceUrl}/_state\` or write to ${sourceUrl}/v3/users and watch it reach ${targets.map((t) => t.url).join(' and ')}; Ctrl-C stops the demo`)
      await new Promise<void>((resolve) => { process.once('SIGINT', resolve); process.once('SIGTERM', resolve) })
    }
    return allMatch ? 0 : 1
  } finally {
    for (const d of dashboards) await d.close()
    for (const r of replicators) await r.close()
    for (const app of apps) await app.close()
    await removeNamespace(nats.nc, namespace).catch(() => {})
    rmSync(`${DATA_DIR}${namespace}`, { recursive: true, force: true })
    await nats.nc.close()
    nats.stop()
  }
}

/** The region's dashboard on its fixed port, or on a free one when that is taken. */
async function dashboardOf (replicator: Replicator, port: number, log: Logger): Promise<MetricsServer> {
  try {
    return await startMetricsServer(replicator, port, '127.0.0.1', log)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err
    return await startMetricsServer(replicator, 0, '127.0.0.1', log)
  }
}

/** Writes a Keystone-like workload: projects, users created, updated, some deleted, grants. */
async function burst (url: string, users: number, wrote: () => void): Promise<number> {
  let count = 0
  const send = async (method: string, path: string, body?: unknown): Promise<any> => {
    const res = await request(url + path, {
      method: method as 'POST',
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body)
    })
    const text = await res.body.text()
    if (res.statusCode >= 300) throw new Error(`${method} ${path} answered ${res.statusCode}: ${text}`)
    count++
    wrote()
    return text === '' ? null : JSON.parse(text)
  }
  const projects: string[] = []
  for (let i = 0; i < Math.max(1, Math.ceil(users / 20)); i++) {
    projects.push((await send('POST', '/v3/projects', { project: { name: `project-${i}`, description: 'demo' } })).project.id)
  }
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < users) {
      const i = next++
      const { user } = await send('POST', '/v3/users', { user: { name: `user-${i}`, email: `user-${i}@example.org`, password: `secret-${i}` } })
      await send('PATCH', `/v3/users/${user.id as string}`, { user: { enabled: i % 2 === 0 } })
      if (i % 4 === 0) {
        await send('DELETE', `/v3/users/${user.id as string}`)
        // Re-created under the same id: order per resource decides whether it exists in the end.
        if (i % 8 === 0) await send('POST', '/v3/users', { user: { id: user.id, name: `user-${i}-again` } })
      } else {
        await send('PUT', `/v3/projects/${projects[i % projects.length] as string}/users/${user.id as string}/roles/member`)
      }
    }
  }
  await Promise.all(Array.from({ length: CONCURRENCY }, worker))
  return count
}

async function fetchState (url: string): Promise<IdentityState> {
  const res = await request(`${url}/_state`)
  return await res.body.json() as IdentityState
}

class LiveTable {
  #lines = 0
  readonly #tty: boolean
  #lastPrint = 0

  constructor (private readonly io: Io) {
    this.#tty = process.stdout.isTTY === true
  }

  draw (lags: RegionLag[], applied: (region: string) => number, writes: number): void {
    const rows = [['REGION', 'INSTANCES', 'PENDING', 'LAG', 'APPLIED'],
      ...lags.map((l) => [l.region, String(INSTANCES_PER_REGION), String(l.pending), `${l.lagSeconds.toFixed(2)}s`, String(applied(l.region))])]
    const widths = (rows[0] as string[]).map((_, i) => Math.max(...rows.map((r) => (r[i] as string).length)))
    const lines = [`writes on ${SOURCE}: ${writes}`, ...rows.map((r) => r.map((c, i) => c.padEnd(widths[i] as number)).join('  ').trimEnd())]
    if (this.#tty) {
      if (this.#lines > 0) process.stdout.write(`\x1b[${this.#lines}A`)
      for (const line of lines) process.stdout.write(`\x1b[2K${line}\n`)
      this.#lines = lines.length
    } else if (Date.now() - this.#lastPrint >= 1000 || lags.every((l) => l.pending === 0)) {
      this.#lastPrint = Date.now()
      for (const line of lines) this.io.out(line)
    }
  }
}

interface DemoNats { nc: NatsConnection, url: string, started: boolean, stop: () => void }

/** NATS_URL if set, else a server on 127.0.0.1:4222, else a nats-server started from PATH. */
async function natsFor (url: string | undefined, io: Io): Promise<DemoNats | null> {
  if (url !== undefined && url !== '') {
    return { nc: await connectNats({ servers: url.split(',') }), url, started: false, stop: () => {} }
  }
  const local = 'nats://127.0.0.1:4222'
  try {
    return { nc: await connectNats({ servers: local, timeout: 1000 }), url: local, started: false, stop: () => {} }
  } catch {
    // Nothing there: start our own.
  }
  const port = await freePort()
  const storeDir = `${DATA_DIR}demo-nats`
  mkdirSync(storeDir, { recursive: true })
  const proc: ChildProcess = spawn('nats-server', ['-js', '-a', '127.0.0.1', '-p', String(port), '-sd', storeDir], { stdio: 'ignore' })
  const spawned = await new Promise<boolean>((resolve) => {
    proc.once('error', () => resolve(false))
    proc.once('spawn', () => resolve(true))
  })
  if (!spawned) {
    io.err(INSTALL_HINT)
    return null
  }
  const ownUrl = `nats://127.0.0.1:${port}`
  for (let i = 0; i < 100; i++) {
    try {
      return { nc: await connectNats({ servers: ownUrl, timeout: 500 }), url: ownUrl, started: true, stop: () => proc.kill('SIGTERM') }
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  }
  proc.kill('SIGKILL')
  io.err(`nats-server did not start on ${ownUrl}`)
  return null
}

/** The demo leaves nothing behind on a shared server. */
async function removeNamespace (nc: NatsConnection, namespace: string): Promise<void> {
  const jsm = await jetstreamManager(nc)
  const n = names(namespace)
  for (const stream of [n.eventStream, n.dlqStream, `KV_${n.appliedBucket}`, `KV_${n.replayBucket}`]) {
    await jsm.streams.delete(stream).catch(() => false)
  }
}
