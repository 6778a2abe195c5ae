import { readFile } from 'node:fs/promises'
import { jetstream, jetstreamManager } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import {
  DEFAULT_NAMESPACE, DEFAULT_NATS_URL, DEV_SIGNING_KEY, InvalidOptionError, createLogger, createSigner, eventStreamPartitions,
  isRegionsyncError, names, parseSigningKeys, validateNamespace, writeVerifySummaries, type Logger
} from '@regionsync/shared'
import { parseVerifyConfig, type VerifyConfig } from './config.js'
import { DEFAULT_VERIFY_METRICS_PORT, createVerifyMetrics, startVerifyMetricsServer, summariesOf } from './metrics.js'
import { ProgressLine, formatVerifyReport } from './report.js'
import { runVerify, type VerifyNats, type VerifyReport } from './verifier.js'

export const DEFAULT_MAX_REPAIRS = 100

/**
 * Every option of `regionsync verify`, in one place (the command's flag parser reads this table;
 * a port to another parser starts here). Each flag also reads its environment variable.
 */
export const VERIFY_OPTIONS = {
  config: { type: 'string', env: 'REGIONSYNC_VERIFY_CONFIG' },
  nats: { type: 'string', env: 'NATS_URL', fallback: DEFAULT_NATS_URL },
  namespace: { type: 'string', env: 'REGIONSYNC_NAMESPACE', fallback: DEFAULT_NAMESPACE },
  'signing-key': { type: 'string', env: 'REGIONSYNC_SIGNING_KEY' },
  dev: { type: 'boolean', env: 'REGIONSYNC_DEV' },
  repair: { type: 'boolean' },
  'dry-run': { type: 'boolean' },
  'max-repairs': { type: 'string', env: 'REGIONSYNC_VERIFY_MAX_REPAIRS', fallback: String(DEFAULT_MAX_REPAIRS) },
  type: { type: 'string' },
  json: { type: 'boolean' },
  every: { type: 'string', env: 'REGIONSYNC_VERIFY_EVERY' },
  'metrics-port': { type: 'string', env: 'REGIONSYNC_VERIFY_METRICS_PORT', fallback: String(DEFAULT_VERIFY_METRICS_PORT) },
  'metrics-host': { type: 'string', env: 'REGIONSYNC_METRICS_HOST', fallback: '0.0.0.0' },
  'max-rps': { type: 'string', env: 'REGIONSYNC_VERIFY_MAX_RPS' },
  concurrency: { type: 'string', env: 'REGIONSYNC_VERIFY_CONCURRENCY' },
  help: { type: 'boolean', short: 'h' }
} as const

export const VERIFY_USAGE = 'usage: regionsync verify --config FILE [--repair [--dry-run] [--max-repairs N]] [--type T[,T]] [--json] [--every 10m [--metrics-port N]] [--max-rps N] [--concurrency N] [--signing-key K] [--nats URL] [--namespace NS]'

type Values = Record<keyof typeof VERIFY_OPTIONS, string | boolean | undefined>

export interface VerifyIo {
  out: (line: string) => void
  err: (line: string) => void
  env: Record<string, string | undefined>
  /** Where the progress line is drawn; only given when it is a terminal. */
  progress?: (s: string) => void
}

export interface VerifyCommandTools {
  /** The command's flag parser, given VERIFY_OPTIONS. */
  parse: (args: string[]) => Values
  connect: (servers: string) => Promise<NatsConnection>
}

/** `regionsync verify`: exit 0 only when every region matches the source (in `--every` mode, runs until SIGTERM). */
export async function verifyCommand (args: string[], io: VerifyIo, tools: VerifyCommandTools): Promise<number> {
  const f = tools.parse(args)
  if (f.help === true) { io.out(VERIFY_USAGE); return 0 }
  const configPath = f.config
  if (typeof configPath !== 'string' || configPath === '') throw new InvalidOptionError('--config', 'is required (or REGIONSYNC_VERIFY_CONFIG); expects the path of a verify config (JSON)')
  let raw: unknown
  try {
    raw = JSON.parse(await readFile(configPath, 'utf8'))
  } catch (err) {
    throw new InvalidOptionError('--config', `cannot read ${configPath} as JSON (${(err as Error).message})`, { cause: err })
  }
  const parsed = parseVerifyConfig(raw, io.env)
  const config: VerifyConfig = {
    ...parsed,
    ...(f['max-rps'] !== undefined ? { maxRps: whole(f['max-rps'], '--max-rps', 1, 100_000) } : {}),
    ...(f.concurrency !== undefined ? { concurrency: whole(f.concurrency, '--concurrency', 1, 256) } : {})
  }
  const types = typeof f.type === 'string' ? f.type.split(',') : undefined
  for (const t of types ?? []) {
    if (!config.types.some((c) => c.name === t)) throw new InvalidOptionError('--type', `names ${t}, which the config does not list (${config.types.map((c) => c.name).join(', ')})`)
  }
  const repair = f.repair === true
  const dryRun = f['dry-run'] === true
  if (dryRun && !repair) throw new InvalidOptionError('--dry-run', 'goes with --repair (it lists the repairs --repair would publish)')
  const maxRepairs = whole(f['max-repairs'], '--max-repairs', 0, 10_000_000)
  let signingKey: string | undefined
  if (repair && !dryRun) {
    signingKey = f['signing-key'] as string | undefined
    if (signingKey === undefined) {
      if (f.dev !== true) throw new InvalidOptionError('--signing-key', 'is required with --repair (or REGIONSYNC_SIGNING_KEY): repairs are events, signed like the publishers\' (--dev allows the insecure dev key)')
      signingKey = DEV_SIGNING_KEY
    }
    parseSigningKeys(signingKey, '--signing-key')
  }
  const everyMs = f.every === undefined ? null : duration(f.every as string, '--every')
  const metricsPort = whole(f['metrics-port'], '--metrics-port', 0, 65535)
  const n = names(validateNamespace(f.namespace, '--namespace'))
  // stderr: stdout is the report (--json is for scripts).
  const log = createLogger({ name: 'regionsync-verify', level: io.env.LOG_LEVEL ?? (everyMs === null ? 'warn' : 'info') }, process.stderr)

  const nc = await tools.connect(f.nats as string)
  try {
    const jsm = await jetstreamManager(nc)
    const partitions = await eventStreamPartitions(jsm, n)
    if (partitions === null) throw new InvalidOptionError('--namespace', `no regionsync event stream ${n.eventStream} on ${f.nats as string}; verify needs the stream the regions replicate through`)
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
    return await continuous(once, everyMs, metricsPort, f['metrics-host'] as string, nc, n, log, types === undefined)
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

function whole (value: string | boolean | undefined, flag: string, min: number, max: number): number {
  const v = Number(value)
  if (typeof value !== 'string' || !/^\d+$/.test(value) || v < min || v > max) throw new InvalidOptionError(flag, `expects a whole number from ${min} to ${max}`)
  return v
}

const UNIT_MS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000 }

/** `30s`, `10m`, `1h`: at least 10 seconds, at most a day. */
export function duration (value: string, flag: string): number {
  const m = /^(\d+)(s|m|h)$/.exec(value)
  const ms = m === null ? NaN : Number(m[1]) * (UNIT_MS[m[2] as string] as number)
  if (!(ms >= 10_000 && ms <= 86_400_000)) throw new InvalidOptionError(flag, 'expects a duration from 10s to 24h, such as 30s, 10m or 1h')
  return ms
}
