import { parseArgs, type ParseArgsConfig } from 'node:util'
import { jetstreamManager } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import {
  DEFAULT_NAMESPACE, DEFAULT_NATS_URL, DEV_SIGNING_KEY, InvalidOptionError, connectNats, createLogger, isNotFound, isRegionsyncError,
  names, parseEncryptionKey, parseSigningKeys, parseStartFrom, validateNamespace, validateRegion, type Names
} from '@regionsync/shared'
import { gatherStatus, formatStatusTable, DEFAULT_STATUS_WAIT_MS } from './cluster-status.js'
import { listDeadLetters, type StoredDeadLetter } from './dead-letter.js'
import { IdentityResolver } from './identity.js'
import { DEFAULT_METRICS_HOST, DEFAULT_METRICS_PORT, startMetricsServer, type MetricsServer } from './http-server.js'
import { DEFAULT_REQUEST_TIMEOUT_MS, parseTargetUrl } from './options.js'
import { Replicator, type DlqReplayResult } from './replicator.js'
import { VERIFY_OPTIONS, verifyCommand } from './verify/command.js'

/* The command's own human output goes to stdout/stderr directly; everything else logs through pino. */

const USAGE = `usage: regionsync <command> [options]

commands:
  replicate   apply events to one target region (--region, --target, ...)
  status      every region: live instances, pending, lag, applied/s, dead letters, breaker
  dlq list    dead letters of one region (--region)
  dlq replay  send a region's dead letters back to it (--region [--id EVENT_ID])
  verify      compare every region with the source through the API's reads; --repair through the stream
  ids map     tell a region the id its target knows an entity by (--region --type --source --target),
              for an unmapped-id dead letter; then dlq replay it
  demo        a source API, two target regions and their replicators, live

every flag also reads an environment variable; flags win. See README.md.`

type Env = Record<string, string | undefined>

interface Io {
  out: (line: string) => void
  err: (line: string) => void
  env: Env
}

const COMMON = {
  nats: { type: 'string', env: 'NATS_URL', fallback: DEFAULT_NATS_URL },
  namespace: { type: 'string', env: 'REGIONSYNC_NAMESPACE', fallback: DEFAULT_NAMESPACE },
  help: { type: 'boolean', short: 'h' }
} as const

type FlagSpec = Record<string, { type: 'string' | 'boolean', env?: string, fallback?: string, short?: string }>

/** Parses flags, filling each from its environment variable when the flag is absent. */
function flags<T extends FlagSpec> (args: string[], spec: T, env: Env): Record<keyof T, string | boolean | undefined> {
  const config: ParseArgsConfig = {
    args,
    strict: true,
    allowPositionals: false,
    options: Object.fromEntries(Object.entries(spec).map(([k, v]) => [k, { type: v.type, ...(v.short !== undefined ? { short: v.short } : {}) }]))
  }
  let values: Record<string, string | boolean | undefined>
  try {
    values = parseArgs(config).values as Record<string, string | boolean | undefined>
  } catch (err) {
    throw new InvalidOptionError('arguments', (err as Error).message.split('\n')[0] as string)
  }
  const out: Record<string, string | boolean | undefined> = {}
  for (const [k, v] of Object.entries(spec)) {
    const fromEnv = v.env === undefined ? undefined : env[v.env]
    out[k] = values[k] ?? (v.type === 'boolean' ? (fromEnv === undefined ? undefined : ['1', 'true', 'yes'].includes(fromEnv)) : (fromEnv === '' ? undefined : fromEnv)) ?? v.fallback
  }
  return out as Record<keyof T, string | boolean | undefined>
}

function required (value: string | boolean | undefined, flag: string, env: string, expected: string): string {
  if (typeof value !== 'string' || value === '') throw new InvalidOptionError(flag, `is required (or ${env}); expects ${expected}`)
  return value
}

function count (value: string | boolean | undefined, flag: string, min: number, max: number): number {
  const n = Number(value)
  if (typeof value !== 'string' || !/^\d+$/.test(value) || n < min || n > max) throw new InvalidOptionError(flag, `expects a whole number from ${min} to ${max}`)
  return n
}

function port (value: string | boolean | undefined, flag: string): number {
  const n = Number(value)
  if (typeof value !== 'string' || !/^\d+$/.test(value) || n > 65535) throw new InvalidOptionError(flag, 'expects a port number from 0 to 65535 (0 picks a free one)')
  return n
}

async function replicate (args: string[], io: Io): Promise<number> {
  const f = flags(args, {
    ...COMMON,
    region: { type: 'string', env: 'REGIONSYNC_REGION' },
    target: { type: 'string', env: 'REGIONSYNC_TARGET_URL' },
    'metrics-port': { type: 'string', env: 'REGIONSYNC_METRICS_PORT', fallback: String(DEFAULT_METRICS_PORT) },
    'metrics-host': { type: 'string', env: 'REGIONSYNC_METRICS_HOST', fallback: DEFAULT_METRICS_HOST },
    'signing-key': { type: 'string', env: 'REGIONSYNC_SIGNING_KEY' },
    'target-token': { type: 'string', env: 'REGIONSYNC_TARGET_TOKEN' },
    'encryption-key': { type: 'string', env: 'REGIONSYNC_ENCRYPTION_KEY' },
    concurrency: { type: 'string', env: 'REGIONSYNC_CONCURRENCY' },
    window: { type: 'string', env: 'REGIONSYNC_WINDOW' },
    'max-rps': { type: 'string', env: 'REGIONSYNC_MAX_RPS', fallback: '0' },
    'timeout-ms': { type: 'string', env: 'REGIONSYNC_TIMEOUT_MS', fallback: String(DEFAULT_REQUEST_TIMEOUT_MS) },
    connections: { type: 'string', env: 'REGIONSYNC_CONNECTIONS' },
    from: { type: 'string', env: 'REGIONSYNC_FROM', fallback: 'first' },
    dev: { type: 'boolean', env: 'REGIONSYNC_DEV' }
  }, io.env)
  if (f.help === true) { io.out('usage: regionsync replicate --region R --target URL [--nats URL] [--metrics-port N] [--signing-key K] [--target-token T] [--encryption-key K] [--from first|new|seq:N|time:ISO] [--concurrency N] [--window N] [--max-rps N] [--timeout-ms N] [--connections N]'); return 0 }
  const region = validateRegion(required(f.region, '--region', 'REGIONSYNC_REGION', 'a region name such as eu'), '--region')
  const target = parseTargetUrl(required(f.target, '--target', 'REGIONSYNC_TARGET_URL', 'the base URL of the region\'s API'), '--target')
  const metricsPort = port(f['metrics-port'], '--metrics-port')
  let signingKey = f['signing-key'] as string | undefined
  if (signingKey === undefined) {
    if (f.dev !== true) throw new InvalidOptionError('--signing-key', 'is required (or REGIONSYNC_SIGNING_KEY); expects the secret the publishers sign with (--dev allows the insecure dev key)')
    signingKey = DEV_SIGNING_KEY
  }
  // Checked before connecting, so a bad value is reported by its flag whether or not NATS is up.
  parseSigningKeys(signingKey, '--signing-key')
  const encryptionKey = f['encryption-key'] as string | undefined
  if (encryptionKey !== undefined) parseEncryptionKey(encryptionKey, '--encryption-key')
  const from = parseStartFrom(f.from as string, '--from')
  const concurrency = f.concurrency === undefined ? undefined : count(f.concurrency, '--concurrency', 1, 4096)
  const window = f.window === undefined ? undefined : count(f.window, '--window', 1, 4096)
  const maxRps = count(f['max-rps'], '--max-rps', 0, 1_000_000)
  const requestTimeoutMs = count(f['timeout-ms'], '--timeout-ms', 100, 600_000)
  const connections = f.connections === undefined ? undefined : count(f.connections, '--connections', 1, 4096)
  const namespace = validateNamespace(f.namespace, '--namespace')
  const metricsHost = f['metrics-host'] as string
  const log = createLogger({ name: 'regionsync' })
  if (f.dev === true) log.warn('dev mode: accepting events signed with the well-known dev key')
  const nc = await connectTo(f.nats as string)
  let replicator: Replicator
  try {
    replicator = await Replicator.start({
      region,
      target,
      targetToken: f['target-token'] as string | undefined,
      signingKey,
      ...(encryptionKey !== undefined ? { encryptionKey } : {}),
      ...(concurrency !== undefined ? { concurrency } : {}),
      ...(window !== undefined ? { window } : {}),
      ...(connections !== undefined ? { connections } : {}),
      maxRps,
      requestTimeoutMs,
      connection: nc,
      ownsConnection: true,
      logger: log,
      namespace,
      from
    })
  } catch (err) {
    // An open connection would keep the process alive after the error is reported.
    await nc.close()
    throw err
  }
  let server: MetricsServer
  try {
    server = await startMetricsServer(replicator, metricsPort, metricsHost, log)
  } catch (err) {
    await replicator.close()
    throw new InvalidOptionError('--metrics-port', `cannot listen on ${metricsHost}:${metricsPort} (${(err as Error).message})`, { cause: err })
  }
  await new Promise<void>((resolve) => {
    const stop = (signal: string): void => {
      log.info({ signal }, 'shutting down')
      process.once(signal, () => process.exit(1))
      resolve()
    }
    process.once('SIGTERM', () => stop('SIGTERM'))
    process.once('SIGINT', () => stop('SIGINT'))
  })
  await replicator.close()
  await server.close()
  return 0
}

async function connectTo (servers: string): Promise<Awaited<ReturnType<typeof connectNats>>> {
  try {
    return await connectNats({ servers: servers.split(',') })
  } catch (err) {
    throw new InvalidOptionError('--nats', `cannot reach NATS at ${servers} (${(err as Error).message}); start nats-server -js, or set NATS_URL`, { cause: err })
  }
}

async function status (args: string[], io: Io): Promise<number> {
  const f = flags(args, { ...COMMON, json: { type: 'boolean' }, watch: { type: 'boolean' }, 'wait-ms': { type: 'string', fallback: String(DEFAULT_STATUS_WAIT_MS) } }, io.env)
  const waitMs = Number(f['wait-ms'])
  if (!Number.isInteger(waitMs) || waitMs < 10 || waitMs > 60_000) throw new InvalidOptionError('--wait-ms', 'expects milliseconds from 10 to 60000')
  const n = names(validateNamespace(f.namespace, '--namespace'))
  const nc = await connectTo(f.nats as string)
  try {
    let drawn = 0
    for (;;) {
      const rows = await gatherStatus(nc, n, waitMs)
      const lines = f.json === true
        ? [JSON.stringify(rows)]
        : rows.length === 0 ? ['no regions yet: start a replicator with `regionsync replicate`'] : formatStatusTable(rows)
      if (f.watch !== true) {
        for (const line of lines) io.out(line)
        return 0
      }
      // Redraw in place: up over what was drawn, clear each line.
      if (drawn > 0) process.stdout.write(`\x1b[${drawn}A`)
      for (const line of [`regionsync status  ${new Date().toISOString()}  (Ctrl-C to stop)`, ...lines]) process.stdout.write(`\x1b[2K${line}\n`)
      drawn = lines.length + 1
      await new Promise((resolve) => setTimeout(resolve, 2000))
    }
  } finally {
    await nc.close()
  }
}

async function dlq (args: string[], io: Io): Promise<number> {
  const [sub, ...rest] = args
  if (sub !== 'list' && sub !== 'replay') throw new InvalidOptionError('dlq', 'expects a subcommand: list or replay')
  const f = flags(rest, {
    ...COMMON,
    region: { type: 'string', env: 'REGIONSYNC_REGION' },
    json: { type: 'boolean' },
    id: { type: 'string' },
    'wait-ms': { type: 'string', fallback: '30000' }
  }, io.env)
  const region = validateRegion(required(f.region, '--region', 'REGIONSYNC_REGION', 'a region name'), '--region')
  const n = names(validateNamespace(f.namespace, '--namespace'))
  const nc = await connectTo(f.nats as string)
  try {
    const letters = await listDeadLetters(await jetstreamManager(nc), n, region)
    if (sub === 'replay') return await replayLetters(nc, n, region, letters, f.id as string | undefined, Number(f['wait-ms']), io)
    if (f.json === true) {
      io.out(JSON.stringify(letters.map(({ payload: _p, signature: _s, ...rest }) => rest)))
    } else if (letters.length === 0) {
      io.out(`no dead letters for region ${region}`)
    } else {
      for (const l of letters) {
        io.out(`${l.failedAt}  ${l.reason}${l.status === null ? '' : ` ${l.status}`}  ${l.eventId ?? '-'}  ${l.method ?? '-'} ${l.path ?? '-'}  ${l.detail}${l.excerpt === '' ? '' : `  body: ${l.excerpt.slice(0, 120).replace(/\s+/g, ' ')}`}`)
      }
    }
    return 0
  } finally {
    await nc.close()
  }
}

/**
 * Hands each letter to a live replicator of the region (one of its instances answers), which
 * replays it with the region's own credential and records; so the letter goes to that region only.
 */
async function replayLetters (nc: NatsConnection, n: Names, region: string, letters: StoredDeadLetter[], id: string | undefined, waitMs: number, io: Io): Promise<number> {
  const chosen = id === undefined ? letters : letters.filter((l) => l.eventId === id)
  if (chosen.length === 0) {
    io.out(id === undefined ? `no dead letters for region ${region}` : `no dead letter with event id ${id} for region ${region}`)
    return id === undefined ? 0 : 1
  }
  let failed = 0
  for (const letter of chosen) {
    let result: DlqReplayResult
    try {
      result = (await nc.request(n.dlqReplaySubject(region), JSON.stringify({ dlqSeq: letter.dlqSeq }), { timeout: waitMs })).json<DlqReplayResult>()
    } catch (err) {
      throw new InvalidOptionError('--region', `no replicator of region ${region} answered (${(err as Error).message}); dlq replay needs one running`, { cause: err })
    }
    if (result.outcome === 'failed') failed++
    io.out(`${letter.eventId ?? `dlq#${letter.dlqSeq}`}  ${result.outcome}${result.detail === '' ? '' : `  ${result.detail}`}`)
  }
  return failed === 0 ? 0 : 1
}

async function ids (args: string[], io: Io): Promise<number> {
  const [sub, ...rest] = args
  if (sub !== 'map') throw new InvalidOptionError('ids', 'expects a subcommand: map')
  const f = flags(rest, {
    ...COMMON,
    region: { type: 'string', env: 'REGIONSYNC_REGION' },
    type: { type: 'string' },
    source: { type: 'string' },
    target: { type: 'string' }
  }, io.env)
  const region = validateRegion(required(f.region, '--region', 'REGIONSYNC_REGION', 'a region name'), '--region')
  const type = required(f.type, '--type', 'no variable', 'the collection path the dead letter names, e.g. /api/articles')
  if (!type.startsWith('/')) throw new InvalidOptionError('--type', 'expects a path starting with "/", e.g. /api/articles')
  const source = decodeURIComponent(required(f.source, '--source', 'no variable', "the source's id"))
  const target = required(f.target, '--target', 'no variable', 'the id the target region knows the entity by')
  const n = names(validateNamespace(f.namespace, '--namespace'))
  const nc = await connectTo(f.nats as string)
  try {
    // The buckets take the event stream's replicas, as the replicator creates them.
    let replicas = 1
    try {
      replicas = (await (await jetstreamManager(nc)).streams.info(n.eventStream)).config.num_replicas
    } catch (err) {
      if (!isNotFound(err)) throw err
    }
    const resolver = await IdentityResolver.open(nc, n, region, { replicas, logger: createLogger({ level: 'warn' }) })
    try {
      await resolver.map(type, source, target)
    } finally {
      resolver.close()
    }
    io.out(`${region}: ${type}/${encodeURIComponent(source)} is ${type}/${encodeURIComponent(target)} there`)
    return 0
  } finally {
    await nc.close()
  }
}

async function demo (args: string[], io: Io): Promise<number> {
  // The demo's API lives in the examples workspace; it is not part of the published command.
  const spec = '@regionsync/examples/demo'
  let mod: { runDemo: (args: string[], io: Io) => Promise<number> }
  try {
    mod = await import(spec) as typeof mod
  } catch (err) {
    io.err(`regionsync demo needs the examples workspace (run it from a clone of the regionsync repository): ${(err as Error).message}`)
    return 1
  }
  return await mod.runDemo(args, io)
}

/** Runs the command; returns the exit code. Configuration errors are one line naming the option. */
export async function runCli (argv: string[], io: Io = {
  out: (l) => process.stdout.write(l + '\n'),
  err: (l) => process.stderr.write(l + '\n'),
  env: process.env
}): Promise<number> {
  const [command, ...args] = argv
  try {
    switch (command) {
      case 'replicate': return await replicate(args, io)
      case 'status': return await status(args, io)
      case 'dlq': return await dlq(args, io)
      case 'verify': return await verifyCommand(args, { ...io, ...(process.stderr.isTTY ? { progress: (s: string) => process.stderr.write(s) } : {}) }, { parse: (a) => flags(a, VERIFY_OPTIONS, io.env), connect: connectTo })
      case 'ids': return await ids(args, io)
      case 'demo': return await demo(args, io)
      case undefined: case '-h': case '--help': case 'help':
        io.out(USAGE)
        return command === undefined ? 2 : 0
      default:
        io.err(`regionsync: unknown command "${command}"\n${USAGE}`)
        return 2
    }
  } catch (err) {
    if (isRegionsyncError(err)) {
      io.err(`regionsync: ${err.message}`)
      return 2
    }
    throw err
  }
}
