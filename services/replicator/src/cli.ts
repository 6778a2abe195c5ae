import { createInterface } from 'node:readline/promises'
import { fileURLToPath } from 'node:url'
import { JetStreamApiError, jetstreamManager } from '@nats-io/jetstream'
import { TimeoutError, type NatsConnection } from '@nats-io/transport-node'
import { CommanderError } from 'commander'
import {
  ErrorCode, InvalidOptionError, connectNats, createLogger, createSigner, isNotFound, isRegionsyncError, names, retryUntil,
  type Logger, type Names, type StartFrom
} from '@regionsync/shared'
import { gatherStatus, formatStatusTable, DEFAULT_STATUS_WAIT_MS } from './cluster-status.js'
import { listDeadLetters, type StoredDeadLetter } from './dead-letter.js'
import { IdentityResolver } from './identity.js'
import { DEFAULT_METRICS_HOST, DEFAULT_METRICS_PORT, startMetricsServer, type MetricsServer } from './http-server.js'
import { DEFAULT_REQUEST_TIMEOUT_MS } from './options.js'
import { Replicator, type DlqReplayResult } from './replicator.js'
import { checkSigningKey } from './signing-key-check.js'
import { removeRegion } from './region-remove.js'
import { VERIFY_OPTIONS, verifyCommand, type VerifyFlags } from './verify/command.js'
import {
  EXIT, EXIT_CODES_HELP, EnvCommand, encryptionKey, flag, namespaceFlag, natsFlag, port, region, required, signingKey, signingKeyOf, startFrom, targetUrl, whole,
  type Io
} from './cli-options.js'

export type { Io } from './cli-options.js'
export { EXIT } from './cli-options.js'

/* The command's own human output goes through `Io`; everything else logs through pino. */

const DEFAULT_DLQ_REPLAY_WAIT_MS = 30_000
/** Tries at setting a replicator up before the command gives up with exit 3. */
const START_ATTEMPTS = 3

/** Thrown when the command fails while running (not a configuration problem): exit 3. */
class RuntimeFailure extends Error {}

/**
 * pino's pretty transport when stdout is a terminal (a person reads it), JSON otherwise (a log
 * collector reads it). The transport is resolved from this package, where it is a dependency.
 */
function commandLogger (name: string): Logger {
  if (process.stdout.isTTY !== true) return createLogger({ name })
  return createLogger({
    name,
    transport: { target: fileURLToPath(import.meta.resolve('pino-pretty')), options: { translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname,name' } }
  })
}

async function connectTo (servers: string): Promise<NatsConnection> {
  try {
    return await connectNats({ servers: servers.split(',') })
  } catch (err) {
    throw new InvalidOptionError('--nats', `cannot reach NATS at ${servers} (${(err as Error).message}); start nats-server -js, or set NATS_URL`, { cause: err })
  }
}

interface ReplicateFlags {
  region?: string
  target?: URL
  nats: string
  namespace: string
  metricsPort: number | string
  metricsHost: string
  signingKey?: string
  targetToken?: string
  encryptionKey?: string
  concurrency?: number
  window?: number
  maxRps: number | string
  timeoutMs: number | string
  connections?: number
  from: StartFrom | string
  dev?: boolean
}

async function replicate (f: ReplicateFlags): Promise<number> {
  const regionName = required(f.region, '--region', 'REGIONSYNC_REGION', 'a region name such as eu')
  const target = required(f.target, '--target', 'REGIONSYNC_TARGET_URL', 'the base URL of the region\'s API')
  const key = signingKeyOf(f.signingKey, f.dev, 'to verify events: the secret the publishers sign with')
  // Defaults do not pass through the flag parsers; these are the documented defaults, valid as written.
  const metricsPort = Number(f.metricsPort)
  const from = typeof f.from === 'string' ? startFrom(f.from, '--from') : f.from
  const log = commandLogger('regionsync')
  if (f.dev === true) log.warn('dev mode: accepting events signed with the well-known dev key')
  const nc = await connectTo(f.nats)
  let replicator: Replicator
  try {
    const check = await checkSigningKey(await jetstreamManager(nc), names(f.namespace), createSigner(key))
    if (check.kind === 'mismatch') {
      throw new InvalidOptionError('--signing-key', `verifies none of the newest events on the stream (the last at seq ${check.seq}): every event would be dead-lettered bad-signature; give the key the publishers sign with`)
    }
    if (check.kind === 'no-events') log.warn('no event on the stream yet to check --signing-key against; a wrong key shows as bad-signature dead letters')
    const options = {
      region: regionName,
      target,
      targetToken: f.targetToken,
      signingKey: key,
      ...(f.encryptionKey !== undefined ? { encryptionKey: f.encryptionKey } : {}),
      ...(f.concurrency !== undefined ? { concurrency: f.concurrency } : {}),
      ...(f.window !== undefined ? { window: f.window } : {}),
      ...(f.connections !== undefined ? { connections: f.connections } : {}),
      maxRps: Number(f.maxRps),
      requestTimeoutMs: Number(f.timeoutMs),
      connection: nc,
      // Drained here once the replicator is closed: a failed start must leave it open for the next.
      ownsConnection: false,
      logger: log,
      namespace: f.namespace,
      from
    }
    // A start that fails on the way (JetStream busy, a leader being elected) is tried again; a
    // configuration error is not.
    replicator = await retryUntil(async () => await Replicator.start(options), {
      retryable: (err, attempt) => attempt < START_ATTEMPTS && !isConfigurationError(err),
      delayMs: (attempt) => 1000 * attempt,
      onRetry: (err, attempt) => { log.warn({ err, attempt }, 'could not start; retrying') }
    })
  } catch (err) {
    // An open connection would keep the process alive after the error is reported.
    await nc.close()
    throw err
  }
  let server: MetricsServer
  try {
    server = await startMetricsServer(replicator, metricsPort, f.metricsHost, log)
  } catch (err) {
    await replicator.close()
    await nc.close()
    throw new InvalidOptionError('--metrics-port', `cannot listen on ${f.metricsHost}:${metricsPort} (${(err as Error).message})`, { cause: err })
  }
  let stopping = false
  const lost = await new Promise<Error | null>((resolve) => {
    const stop = (signal: string): void => {
      stopping = true
      log.info({ signal }, 'shutting down')
      process.once(signal, () => process.exit(1))
      resolve(null)
    }
    process.once('SIGTERM', () => stop('SIGTERM'))
    process.once('SIGINT', () => stop('SIGINT'))
    // The client reconnects on its own; the connection closes only when it gives up.
    nc.closed().then((err) => { if (!stopping) resolve(err ?? new Error('connection closed')) }, resolve)
  })
  await replicator.close()
  await server.close()
  if (!nc.isClosed()) await nc.drain().catch((err: unknown) => { log.warn({ err }, 'draining NATS failed') })
  if (lost !== null) {
    log.error({ err: lost }, 'NATS connection lost')
    throw new RuntimeFailure(`lost the NATS connection (${lost.message})`)
  }
  return EXIT.ok
}

interface StatusFlags { nats: string, namespace: string, json?: boolean, watch?: boolean, waitMs: number | string }

async function status (f: StatusFlags, io: Io): Promise<number> {
  const n = names(f.namespace)
  const nc = await connectTo(f.nats)
  try {
    let drawn = 0
    for (;;) {
      const rows = await gatherStatus(nc, n, Number(f.waitMs))
      const lines = f.json === true
        ? [JSON.stringify(rows)]
        : rows.length === 0 ? ['no regions yet: start a replicator with `regionsync replicate`'] : formatStatusTable(rows)
      if (f.watch !== true) {
        for (const line of lines) io.out(line)
        return EXIT.ok
      }
      // Redraw in place: up over what was drawn, clear each line.
      const up = drawn > 0 ? `\x1b[${drawn}A` : ''
      const frame = [`regionsync status  ${new Date().toISOString()}  (Ctrl-C to stop)`, ...lines].map((line) => `\x1b[2K${line}`)
      io.out(up + frame.join('\n'))
      drawn = frame.length
      await new Promise((resolve) => setTimeout(resolve, 2000))
    }
  } finally {
    await nc.close()
  }
}

interface DlqFlags { nats: string, namespace: string, region?: string, json?: boolean, id?: string, waitMs: number | string }

async function dlqList (f: DlqFlags, io: Io): Promise<number> {
  const regionName = required(f.region, '--region', 'REGIONSYNC_REGION', 'a region name')
  const nc = await connectTo(f.nats)
  try {
    const letters = await listDeadLetters(await jetstreamManager(nc), names(f.namespace), regionName)
    if (f.json === true) {
      io.out(JSON.stringify(letters.map(({ payload: _p, signature: _s, ...rest }) => rest)))
    } else if (letters.length === 0) {
      io.out(`no dead letters for region ${regionName}`)
    } else {
      for (const l of letters) {
        io.out(`${l.failedAt}  ${l.reason}${l.status === null ? '' : ` ${l.status}`}  ${l.eventId ?? '-'}  ${l.method ?? '-'} ${l.path ?? '-'}  ${l.detail}${l.excerpt === '' ? '' : `  body: ${l.excerpt.slice(0, 120).replace(/\s+/g, ' ')}`}`)
      }
    }
    return EXIT.ok
  } finally {
    await nc.close()
  }
}

async function dlqReplay (f: DlqFlags, io: Io): Promise<number> {
  const regionName = required(f.region, '--region', 'REGIONSYNC_REGION', 'a region name')
  const n = names(f.namespace)
  const nc = await connectTo(f.nats)
  try {
    const letters = await listDeadLetters(await jetstreamManager(nc), n, regionName)
    return await replayLetters(nc, n, regionName, letters, f.id, Number(f.waitMs), io)
  } finally {
    await nc.close()
  }
}

/**
 * Hands each letter to a live replicator of the region (one of its instances answers), which
 * replays it with the region's own credential and records; so the letter goes to that region only.
 */
async function replayLetters (nc: NatsConnection, n: Names, regionName: string, letters: StoredDeadLetter[], id: string | undefined, waitMs: number, io: Io): Promise<number> {
  const chosen = id === undefined ? letters : letters.filter((l) => l.eventId === id)
  if (chosen.length === 0) {
    io.out(id === undefined ? `no dead letters for region ${regionName}` : `no dead letter with event id ${id} for region ${regionName}`)
    return id === undefined ? EXIT.ok : EXIT.findings
  }
  let failed = 0
  for (const letter of chosen) {
    let result: DlqReplayResult
    try {
      result = (await nc.request(n.dlqReplaySubject(regionName), JSON.stringify({ dlqSeq: letter.dlqSeq }), { timeout: waitMs })).json<DlqReplayResult>()
    } catch (err) {
      throw new RuntimeFailure(`no replicator of region ${regionName} answered (${(err as Error).message}); dlq replay needs one running`, { cause: err })
    }
    if (result.outcome === 'failed') failed++
    io.out(`${letter.eventId ?? `dlq#${letter.dlqSeq}`}  ${result.outcome}${result.detail === '' ? '' : `  ${result.detail}`}`)
  }
  return failed === 0 ? EXIT.ok : EXIT.findings
}

interface IdsMapFlags { nats: string, namespace: string, region?: string, type?: string, source?: string, target?: string }

async function idsMap (f: IdsMapFlags, io: Io): Promise<number> {
  const regionName = required(f.region, '--region', 'REGIONSYNC_REGION', 'a region name')
  const type = required(f.type, '--type', undefined, 'the collection path the dead letter names, e.g. /api/articles')
  const source = decodeURIComponent(required(f.source, '--source', undefined, "the source's id"))
  const target = required(f.target, '--target', undefined, 'the id the target region knows the entity by')
  const n = names(f.namespace)
  const nc = await connectTo(f.nats)
  try {
    // The buckets take the event stream's replicas, as the replicator creates them.
    let replicas = 1
    try {
      replicas = (await (await jetstreamManager(nc)).streams.info(n.eventStream)).config.num_replicas
    } catch (err) {
      if (!isNotFound(err)) throw err
    }
    const resolver = await IdentityResolver.open(nc, n, regionName, { replicas, logger: createLogger({ level: 'warn' }) })
    try {
      await resolver.map(type, source, target)
    } finally {
      resolver.close()
    }
    io.out(`${regionName}: ${type}/${encodeURIComponent(source)} is ${type}/${encodeURIComponent(target)} there`)
    return EXIT.ok
  } finally {
    await nc.close()
  }
}

interface RegionRemoveFlags { nats: string, namespace: string, yes?: boolean, waitMs: number | string }

async function regionRemove (name: string, f: RegionRemoveFlags, io: Io): Promise<number> {
  const regionName = region(name, '<name>')
  const n = names(f.namespace)
  const nc = await connectTo(f.nats)
  try {
    const live = (await gatherStatus(nc, n, Number(f.waitMs))).find((r) => r.region === regionName)?.instances.length ?? 0
    if (live > 0) throw new InvalidOptionError('<name>', `region ${regionName} has ${live} live replicator(s); stop them first, or they would recreate what this removes`)
    if (f.yes !== true) {
      if (process.stdin.isTTY !== true) throw new InvalidOptionError('--yes', `is needed to remove region ${regionName} without a terminal to confirm on`)
      const rl = createInterface({ input: process.stdin, output: process.stderr })
      const answer = await rl.question(`remove region ${regionName} from namespace ${n.namespace}: its consumers, records and dead letters? type the region name to confirm: `)
      rl.close()
      if (answer.trim() !== regionName) {
        io.out(`region ${regionName} left as it was`)
        return EXIT.findings
      }
    }
    const removed = await removeRegion(await jetstreamManager(nc), n, regionName)
    io.out(`region ${regionName} removed: ${removed.consumers} consumers, ${removed.records} records and dead letters`)
    return EXIT.ok
  } finally {
    await nc.close()
  }
}

function collectionPath (value: string, name: string): string {
  if (!value.startsWith('/')) throw new InvalidOptionError(name, 'expects a path starting with "/", e.g. /api/articles')
  return value
}

const regionFlag = (): ReturnType<typeof flag> => flag('--region <name>', 'the region', { env: 'REGIONSYNC_REGION', parse: region })

/**
 * The whole command line: every subcommand, its flags with their variables, and its help, from
 * one set of definitions. A fresh program per run: commander keeps parsed values on it.
 */
function program (io: Io, done: (code: number) => void): EnvCommand {
  const run = async (code: Promise<number>): Promise<void> => { done(await code) }
  const root = new EnvCommand('regionsync')
  root.env = io.env
  root
    .description('keep regional copies of an HTTP API in step over NATS JetStream')
    .configureOutput({
      writeOut: (s) => io.out(s.replace(/\n$/, '')),
      writeErr: (s) => io.err(s.replace(/\n$/, '')),
      outputError: (s, write) => write(`regionsync: ${s.replace(/^error: /, '').trim().replace(/\s*\n\s*/g, ' ')}`)
    })
    .exitOverride()
    .showSuggestionAfterError()
    .addHelpText('afterAll', EXIT_CODES_HELP)

  root.command('replicate')
    .description('apply the events of every other region to one target region, in order per resource')
    .addOption(regionFlag())
    .addOption(flag('--target <url>', 'base URL of that region\'s API', { env: 'REGIONSYNC_TARGET_URL', parse: targetUrl }))
    .addOption(natsFlag()).addOption(namespaceFlag())
    .addOption(flag('--signing-key <key>', 'key the publishers sign events with (at least 32 bytes)', { env: 'REGIONSYNC_SIGNING_KEY', parse: signingKey }))
    .addOption(flag('--dev', 'accept events signed with the insecure, well-known dev key', { env: 'REGIONSYNC_DEV' }))
    .addOption(flag('--target-token <token>', 'credential sent to the target as Authorization: Bearer', { env: 'REGIONSYNC_TARGET_TOKEN' }))
    .addOption(flag('--encryption-key <key>', 'key that opens opted-in headers carried encrypted', { env: 'REGIONSYNC_ENCRYPTION_KEY', parse: encryptionKey }))
    .addOption(flag('--metrics-port <port>', '/metrics, /status, /healthz, /readyz and the dashboard (0 picks a free one and logs it)', { env: 'REGIONSYNC_METRICS_PORT', default: String(DEFAULT_METRICS_PORT), parse: port }))
    .addOption(flag('--metrics-host <host>', 'address the metrics server listens on (0.0.0.0: every interface)', { env: 'REGIONSYNC_METRICS_HOST', default: DEFAULT_METRICS_HOST }))
    .addOption(flag('--from <where>', 'where a new region starts: first, new, seq:N or time:ISO', { env: 'REGIONSYNC_FROM', default: 'first', parse: startFrom }))
    .addOption(flag('--concurrency <n>', 'replays in flight per instance', { env: 'REGIONSYNC_CONCURRENCY', parse: whole(1, 4096) }))
    .addOption(flag('--window <n>', 'events in flight per partition this instance owns (default 64; 1: one at a time)', { env: 'REGIONSYNC_WINDOW', parse: whole(1, 4096) }))
    .addOption(flag('--max-rps <n>', 'replays per second to the target (0: no limit)', { env: 'REGIONSYNC_MAX_RPS', default: '0', parse: whole(0, 1_000_000) }))
    .addOption(flag('--timeout-ms <ms>', 'timeout of one replay', { env: 'REGIONSYNC_TIMEOUT_MS', default: String(DEFAULT_REQUEST_TIMEOUT_MS), parse: whole(100, 600_000) }))
    .addOption(flag('--connections <n>', 'HTTP connections to the target', { env: 'REGIONSYNC_CONNECTIONS', parse: whole(1, 4096) }))
    .action((f: ReplicateFlags) => run(replicate(f)))

  root.command('status')
    .description('every region: live instances, pending, lag, applied/s, dead letters, breaker')
    .addOption(natsFlag()).addOption(namespaceFlag())
    .addOption(flag('--json', 'print JSON'))
    .addOption(flag('--watch', 'redraw every 2 s until Ctrl-C'))
    .addOption(flag('--wait-ms <ms>', 'how long to wait for replicators to answer', { env: 'REGIONSYNC_STATUS_WAIT_MS', default: String(DEFAULT_STATUS_WAIT_MS), parse: whole(10, 60_000) }))
    .action((f: StatusFlags) => run(status(f, io)))

  const dlq = root.command('dlq').description('dead letters of one region')
  dlq.command('list')
    .description('list a region\'s dead letters')
    .addOption(regionFlag())
    .addOption(natsFlag()).addOption(namespaceFlag())
    .addOption(flag('--json', 'print JSON'))
    .action((f: DlqFlags) => run(dlqList(f, io)))
  dlq.command('replay')
    .description('send a region\'s dead letters back to it through one of its running replicators')
    .addOption(regionFlag())
    .addOption(natsFlag()).addOption(namespaceFlag())
    .addOption(flag('--id <event-id>', 'replay only this event'))
    .addOption(flag('--wait-ms <ms>', 'how long to wait for a replicator to answer each letter', { env: 'REGIONSYNC_DLQ_WAIT_MS', default: String(DEFAULT_DLQ_REPLAY_WAIT_MS), parse: whole(10, 600_000) }))
    .action((f: DlqFlags) => run(dlqReplay(f, io)))

  const verify = root.command('verify')
    .description('compare every region with the source through the API\'s reads; --repair through the stream')
  for (const option of VERIFY_OPTIONS) verify.addOption(option)
  verify.action((f: VerifyFlags) => run(verifyCommand(f, { ...io, ...(process.stderr.isTTY ? { progress: (s: string) => process.stderr.write(s) } : {}) }, { connect: connectTo })))

  const ids = root.command('ids').description('identifiers the regions know an entity by')
  ids.command('map')
    .description('tell a region the id its target knows an entity by, for an unmapped-id dead letter; then dlq replay it')
    .addOption(regionFlag())
    .addOption(natsFlag()).addOption(namespaceFlag())
    .addOption(flag('--type <path>', 'the collection path the dead letter names, e.g. /api/articles', { parse: collectionPath }))
    .addOption(flag('--source <id>', 'the source\'s id'))
    .addOption(flag('--target <id>', 'the id the target region knows the entity by'))
    .action((f: IdsMapFlags) => run(idsMap(f, io)))

  root.command('region').description('regions of a namespace')
    .command('remove')
    .description('delete a region\'s consumers, records and dead letters (a region no longer replicated to); asks to confirm')
    .argument('<name>', 'the region')
    .addOption(natsFlag()).addOption(namespaceFlag())
    .addOption(flag('--yes', 'do not ask to confirm'))
    .addOption(flag('--wait-ms <ms>', 'how long to wait for live replicators of the region to answer', { env: 'REGIONSYNC_STATUS_WAIT_MS', default: String(DEFAULT_STATUS_WAIT_MS), parse: whole(10, 60_000) }))
    .action((name: string, f: RegionRemoveFlags) => run(regionRemove(name, f, io)))

  root.command('demo')
    .description('not in the published package: from a clone of the repository, run `npm run demo`')
    .allowUnknownOption()
    .allowExcessArguments()
    .action(() => {
      io.err('regionsync: the demo is not part of the published package; from a clone of the regionsync repository run `npm run demo`')
      done(EXIT.badConfiguration)
    })

  return root
}

/** A flag, the server or the stream does not fit: exit 2, and no use trying again. */
function isConfigurationError (err: unknown): boolean {
  return isRegionsyncError(err) && (err.code === ErrorCode.InvalidOption || err.code === ErrorCode.UnsupportedServer || err.code === ErrorCode.StreamMismatch)
}

/** The exit code for an error the command ended with; one line on stderr says why (a stack follows an unexpected error). */
function exitFor (err: unknown, io: Io): number {
  if (isRegionsyncError(err)) {
    io.err(`regionsync: ${err.message}`)
    return isConfigurationError(err) ? EXIT.badConfiguration : EXIT.runtimeFailure
  }
  if (err instanceof RuntimeFailure) {
    io.err(`regionsync: ${err.message}`)
    return EXIT.runtimeFailure
  }
  // NATS's own answers are not our bugs: one line, as for the rest; a stack only for the unexpected.
  if (err instanceof JetStreamApiError) {
    io.err(`regionsync: JetStream refused a request: ${err.message} (error ${err.code})`)
    return EXIT.runtimeFailure
  }
  if (err instanceof TimeoutError) {
    io.err('regionsync: NATS did not answer a request in time')
    return EXIT.runtimeFailure
  }
  io.err(`regionsync: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`)
  return EXIT.runtimeFailure
}

/** Runs the command; returns the exit code (see EXIT). Configuration errors are one line naming the option. */
export async function runCli (argv: string[], io: Io = {
  out: (l) => process.stdout.write(l + '\n'),
  err: (l) => process.stderr.write(l + '\n'),
  env: process.env
}): Promise<number> {
  let result: number = EXIT.ok
  const root = program(io, (code) => { result = code })
  try {
    await root.parseAsync(argv, { from: 'user' })
    return result
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help and --version end here too, with 0; every parse error was already written, one line.
      return err.exitCode === 0 ? EXIT.ok : EXIT.badConfiguration
    }
    return exitFor(err, io)
  }
}
