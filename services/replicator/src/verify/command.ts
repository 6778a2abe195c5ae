import { readFile } from 'node:fs/promises'
import { jetstream, jetstreamManager } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import type { Option } from 'commander'
import {
  DEV_SIGNING_KEY, InvalidOptionError, createLogger, createSigner, eventStreamPartitions, isRegionsyncError, names,
  writeVerifySummaries, type Logger
} from '@regionsync/shared'
import { duration, flag, natsFlags, port, signingKey as signingKeyValue, signingKeyOf, whole } from '../cli-options.js'
import { parseVerifyConfig, type VerifyConfig } from './config.js'
import { DEFAULT_VERIFY_METRICS_PORT, createVerifyMetrics, startVerifyMetricsServer, summariesOf } from './metrics.js'
import { ProgressLine, formatVerifyReport } from './report.js'
import { runVerify, type VerifyNats, type VerifyReport } from './verifier.js'

export const DEFAULT_MAX_REPAIRS = 100

/**
 * Every option of `regionsync verify`, in one place: the command line builds its flags, their
 * variables and their help from this list, and checks each value with its parser.
 */
export const VERIFY_OPTIONS: Option[] = [
  flag('--config <file>', 'verify config (JSON): the source, the regions, the types and how to read them', { env: 'REGIONSYNC_VERIFY_CONFIG' }),
  ...natsFlags(),
  flag('--signing-key <key>', 'key repairs are signed with (needed with --repair)', { env: 'REGIONSYNC_SIGNING_KEY', parse: signingKeyValue }),
  flag('--dev', 'sign repairs with the insecure, well-known dev key', { env: 'REGIONSYNC_DEV' }),
  flag('--repair', 'publish a repair event for every difference, through the stream'),
  flag('--dry-run', 'with --repair: list the repairs without publishing them'),
  flag('--max-repairs <n>', 'stop repairing after this many', { env: 'REGIONSYNC_VERIFY_MAX_REPAIRS', default: String(DEFAULT_MAX_REPAIRS), parse: whole(0, 10_000_000) }),
  flag('--type <names>', 'check only these types (comma-separated names from the config)'),
  flag('--json', 'print the report as JSON'),
  flag('--every <duration>', 'run again every 10s..24h (30s, 10m, 1h) until SIGTERM, serving /metrics', { env: 'REGIONSYNC_VERIFY_EVERY', parse: duration }),
  flag('--metrics-port <port>', 'port of /metrics with --every (0 picks a free one)', { env: 'REGIONSYNC_VERIFY_METRICS_PORT', default: String(DEFAULT_VERIFY_METRICS_PORT), parse: port }),
  flag('--metrics-host <host>', 'address /metrics listens on (0.0.0.0: every interface)', { env: 'REGIONSYNC_METRICS_HOST', default: '0.0.0.0' }),
  flag('--max-rps <n>', 'reads per second per region', { env: 'REGIONSYNC_VERIFY_MAX_RPS', parse: whole(1, 100_000) }),
  flag('--concurrency <n>', 'reads in flight per region', { env: 'REGIONSYNC_VERIFY_CONCURRENCY', parse: whole(1, 256) })
]

/** What commander hands the action, each value already checked by its parser in VERIFY_OPTIONS. */
export interface VerifyFlags {
  config?: string
  nats: string
  namespace: string
  signingKey?: string
  dev?: boolean
  repair?: boolean
  dryRun?: boolean
  maxRepairs: number | string
  type?: string
  json?: boolean
  every?: number
  metricsPort: number | string
  metricsHost: string
  maxRps?: number
  concurrency?: number
}

export interface VerifyIo {
  out: (line: string) => void
  err: (line: string) => void
  env: Record<string, string | undefined>
  /** Where the progress line is drawn; only given when it is a terminal. */
  progress?: (s: string) => void
}

export interface VerifyCommandTools {
  connect: (servers: string) => Promise<NatsConnection>
}

/** `regionsync verify`: exit 0 only when every region matches the source (in `--every` mode, runs until SIGTERM). */
export async function verifyCommand (f: VerifyFlags, io: VerifyIo, tools: VerifyCommandTools): Promise<number> {
  const configPath = f.config
  if (configPath === undefined) throw new InvalidOptionError('--config', 'is required (or REGIONSYNC_VERIFY_CONFIG); expects the path of a verify config (JSON)')
  let raw: unknown
  try {
    raw = JSON.parse(await readFile(configPath, 'utf8'))
  } catch (err) {
    throw new InvalidOptionError('--config', `cannot read ${configPath} as JSON (${(err as Error).message})`, { cause: err })
  }
  const parsed = parseVerifyConfig(raw, io.env)
  const config: VerifyConfig = {
    ...parsed,
    ...(f.maxRps !== undefined ? { maxRps: f.maxRps } : {}),
    ...(f.concurrency !== undefined ? { concurrency: f.concurrency } : {})
  }
  const types = f.type?.split(',')
  for (const t of types ?? []) {
    if (!config.types.some((c) => c.name === t)) throw new InvalidOptionError('--type', `names ${t}, which the config does not list (${config.types.map((c) => c.name).join(', ')})`)
  }
  const repair = f.repair === true
  const dryRun = f.dryRun === true
  if (dryRun && !repair) throw new InvalidOptionError('--dry-run', 'goes with --repair (it lists the repairs --repair would publish)')
  const maxRepairs = Number(f.maxRepairs)
  // Repairs are events, signed like the publishers'.
  const signingKey = repair && !dryRun ? signingKeyOf(f.signingKey, f.dev, 'with --repair to sign the repairs') : undefined
  const everyMs = f.every ?? null
  const metricsPort = Number(f.metricsPort)
  const n = names(f.namespace)
  // stderr: stdout is the report (--json is for scripts).
  const log = createLogger({ name: 'regionsync-verify', level: io.env.LOG_LEVEL ?? (everyMs === null ? 'warn' : 'info') }, process.stderr)

  const nc = await tools.connect(f.nats)
  try {
    const jsm = await jetstreamManager(nc)
    const partitions = await eventStreamPartitions(jsm, n)
    if (partitions === null) throw new InvalidOptionError('--namespace', `no regionsync event stream ${n.eventStream} on ${f.nats}; verify needs the stream the regions replicate through`)
    const nats: VerifyNats = {
      jsm,
      names: n,
      partitions,
      ...(signingKey !== undefined || dryRun
        ? { repair: { js: jetstream(nc), jsm, names: n, partitions, signer: createSigner(signingKey ?? DEV_SIGNING_KEY), source: config.source } }
        : {})
    }
    const once = async (): Promise<VerifyReport> => {
      const progress = io.progress === undefined || f.json === true ? null : new ProgressLine(io.progress)
      try {
        return await runVerify({
          config, nats, repair, dryRun, maxRepairs, logger: log, ...(types !== undefined ? { types } : {}),
          ...(progress !== null ? { onProgress: (p) => progress.update(p) } : {})
        })
      } finally {
        progress?.done()
      }
    }
    if (everyMs === null) {
      const report = await once()
      if (types === undefined) await publishSummaries(nc, n, report, log)
      if (f.json === true) io.out(JSON.stringify(report))
      else for (const line of formatVerifyReport(report)) io.out(line)
      return report.clean ? 0 : 1
    }
    return await continuous(once, everyMs, metricsPort, f.metricsHost, nc, n, log, types === undefined)
  } finally {
    await nc.close()
  }
}

/** `--every`: a run, then the next one `everyMs` after this one began (or at once if it took longer), until SIGTERM or SIGINT. */
async function continuous (once: () => Promise<VerifyReport>, everyMs: number, port: number, host: string, nc: NatsConnection, n: ReturnType<typeof names>, log: Logger, full: boolean): Promise<number> {
  const metrics = createVerifyMetrics()
  let server
  try {
    server = await startVerifyMetricsServer(metrics.registry, port, host, log)
  } catch (err) {
    throw new InvalidOptionError('--metrics-port', `cannot listen on ${host}:${port} (${(err as Error).message})`, { cause: err })
  }
  const stop = new AbortController()
  const onSignal = (): void => stop.abort()
  process.once('SIGTERM', onSignal)
  process.once('SIGINT', onSignal)
  try {
    while (!stop.signal.aborted) {
      const began = Date.now()
      try {
        const report = await once()
        metrics.record(report, full)
        if (full) await publishSummaries(nc, n, report, log)
        log.info({ clean: report.clean, differences: report.differences.length, repairs: report.repairs.length, durationMs: report.durationMs }, 'verify run finished')
      } catch (err) {
        if (!isRegionsyncError(err)) throw err
        metrics.failed()
        log.error({ err }, 'verify run failed')
      }
      const waitMs = Math.max(0, began + everyMs - Date.now())
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, waitMs)
        stop.signal.addEventListener('abort', () => { clearTimeout(t); resolve() }, { once: true })
      })
    }
    return 0
  } finally {
    process.off('SIGTERM', onSignal)
    process.off('SIGINT', onSignal)
    await server.close()
  }
}

/** Only after a full check: a run of some types (--type) would show a region clean on types it never read. */
async function publishSummaries (nc: NatsConnection, n: ReturnType<typeof names>, report: VerifyReport, log: Logger): Promise<void> {
  try {
    await writeVerifySummaries(nc, n, summariesOf(report))
  } catch (err) {
    log.warn({ err }, 'could not record the verify summary for regionsync status')
  }
}
