import type { NatsConnection } from '@nats-io/transport-node'
import {
  DEFAULT_ACK_WAIT_MS, DEFAULT_NAMESPACE, InvalidOptionError, parseEncryptionKey, parseSigningKeys, parseStartFrom, validateNamespace, validateRegion,
  type Logger, type StartFrom, type StreamSettings
} from '@regionsync/shared'
import type { Registry } from 'prom-client'
import { DEFAULT_BREAKER, type BreakerSettings } from './circuit-breaker.js'
import { DEFAULT_ALREADY_APPLIED, DEFAULT_RETRY, type AlreadyAppliedMap, type RetrySchedule } from './retry-policy.js'

export const DEFAULT_REQUEST_TIMEOUT_MS = 10_000
export const DEFAULT_SHUTDOWN_GRACE_MS = 10_000
export const DEFAULT_LAG_CACHE_MS = 1000
/**
 * Events an instance keeps in flight per partition it owns: 1,024 over the 16 default partitions.
 * A far region needs many in flight (at an 80 ms round trip an event is in flight some 250 ms, so
 * 1,024 allow about 4,000 a second). More only queue up in the process: with 256 per partition a
 * replicator taking on a backlog was so busy that renewing its leases took 2.5 s.
 */
export const DEFAULT_WINDOW = 64
/** Replays an instance sends at once, over all its partitions; also its keep-alive connections to the target. */
export const DEFAULT_CONCURRENCY = 256

export interface ReplicatorOptions {
  /** The region this replicator applies events to. */
  region: string
  /** Base URL of the region's API. */
  target: string | URL
  /** The region's own credential, sent as `Authorization: Bearer`. */
  targetToken?: string
  /**
   * Secret that verifies events and signs replays; a list (or comma-separated string) while keys
   * rotate: replays are signed with the first (their `webhook-signature` with each), events verify
   * with any.
   */
  signingKey: string | string[]
  /** Key that opens forwarded headers (the publishers' `encryptionKey`). */
  encryptionKey?: string
  /** The NATS connection; the replicator drains it on close only when `ownsConnection`. */
  connection: NatsConnection
  ownsConnection?: boolean
  logger: Logger
  /** @default 'regionsync' */
  namespace?: string
  /** Used when this replicator is the first to create the event stream. */
  stream?: Partial<StreamSettings>
  /** Where the region's consumers start when first created. @default 'first' */
  from?: StartFrom | string
  /** How long JetStream waits for an ack before redelivering. @default 5000 (DEFAULT_ACK_WAIT_MS) */
  ackWaitMs?: number
  /** Timeout of one replay request. @default 10000 */
  requestTimeoutMs?: number
  /** Keep-alive connections to the target. @default the concurrency (256) */
  connections?: number
  retry?: Partial<RetrySchedule>
  /** Statuses that count as already applied, per method. @default { DELETE: [404, 410], POST: [409] } */
  alreadyApplied?: AlreadyAppliedMap
  registry?: Registry
  /** How long close() lets in-flight replays finish before handing them back. @default 10000 */
  shutdownGraceMs?: number
  /** Name of this instance in status answers. @default hostname:pid */
  instance?: string
  /** Replays in flight at once in this instance. @default 256 */
  concurrency?: number
  /** Events in flight per owned partition; 1 applies a partition one event at a time. @default 64 */
  window?: number
  /** Replays a second this instance sends at most (a token bucket); 0 for no limit. @default 0 */
  maxRps?: number
  breaker?: Partial<BreakerSettings>
}

export interface ParsedReplicatorOptions {
  region: string
  target: URL
  targetToken: string | undefined
  signingKey: string[]
  encryptionKey: Buffer | undefined
  connection: NatsConnection
  ownsConnection: boolean
  logger: Logger
  namespace: string
  stream: Partial<StreamSettings>
  from: StartFrom
  ackWaitMs: number
  requestTimeoutMs: number
  connections: number | undefined
  retry: RetrySchedule
  alreadyApplied: AlreadyAppliedMap
  registry: Registry | undefined
  shutdownGraceMs: number
  instance: string
  concurrency: number
  window: number
  maxRps: number
  breaker: BreakerSettings
}

export function parseTargetUrl (value: unknown, option = 'target'): URL {
  let url: URL
  try {
    url = new URL(String(value))
  } catch {
    throw new InvalidOptionError(option, 'expects an http(s) URL such as https://eu.api.internal')
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new InvalidOptionError(option, 'expects an http(s) URL such as https://eu.api.internal')
  if (url.username !== '' || url.password !== '') throw new InvalidOptionError(option, 'must not hold credentials; use --target-token')
  if (url.search !== '' || url.hash !== '') throw new InvalidOptionError(option, 'expects a base URL without query or fragment')
  return url
}

function positiveInt (v: unknown, option: string, min: number): number {
  if (!Number.isInteger(v) || (v as number) < min) throw new InvalidOptionError(option, `expects a whole number, at least ${min}`)
  return v as number
}

export function parseReplicatorOptions (o: ReplicatorOptions): ParsedReplicatorOptions {
  const retry = { ...DEFAULT_RETRY, ...o.retry }
  positiveInt(retry.baseDelayMs, 'retry.baseDelayMs', 1)
  positiveInt(retry.maxDelayMs, 'retry.maxDelayMs', retry.baseDelayMs)
  positiveInt(retry.maxAttempts, 'retry.maxAttempts', 0)
  positiveInt(retry.dependencyAttempts, 'retry.dependencyAttempts', 1)
  if (o.connection === undefined || typeof o.connection.isClosed !== 'function') throw new InvalidOptionError('connection', 'expects a NatsConnection')
  return {
    region: validateRegion(o.region),
    target: parseTargetUrl(o.target),
    targetToken: o.targetToken === '' ? undefined : o.targetToken,
    signingKey: parseSigningKeys(o.signingKey),
    encryptionKey: o.encryptionKey === undefined || o.encryptionKey === '' ? undefined : parseEncryptionKey(o.encryptionKey),
    connection: o.connection,
    ownsConnection: o.ownsConnection ?? false,
    logger: o.logger,
    namespace: validateNamespace(o.namespace ?? DEFAULT_NAMESPACE),
    stream: o.stream ?? {},
    from: typeof o.from === 'string' ? parseStartFrom(o.from) : o.from ?? { kind: 'first' },
    ackWaitMs: positiveInt(o.ackWaitMs ?? DEFAULT_ACK_WAIT_MS, 'ackWaitMs', 1000),
    requestTimeoutMs: positiveInt(o.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS, 'requestTimeoutMs', 100),
    connections: o.connections === undefined ? undefined : positiveInt(o.connections, 'connections', 1),
    retry,
    alreadyApplied: o.alreadyApplied ?? DEFAULT_ALREADY_APPLIED,
    registry: o.registry,
    shutdownGraceMs: positiveInt(o.shutdownGraceMs ?? DEFAULT_SHUTDOWN_GRACE_MS, 'shutdownGraceMs', 0),
    instance: o.instance ?? `${process.env.HOSTNAME ?? 'replicator'}:${process.pid}`,
    concurrency: positiveInt(o.concurrency ?? DEFAULT_CONCURRENCY, 'concurrency', 1),
    window: positiveInt(o.window ?? DEFAULT_WINDOW, 'window', 1),
    maxRps: positiveInt(o.maxRps ?? 0, 'maxRps', 0),
    breaker: parseBreaker(o.breaker)
  }
}

function parseBreaker (b: Partial<BreakerSettings> | undefined): BreakerSettings {
  const s = { ...DEFAULT_BREAKER, ...b }
  positiveInt(s.failureThreshold, 'breaker.failureThreshold', 1)
  positiveInt(s.openMs, 'breaker.openMs', 10)
  positiveInt(s.maxOpenMs, 'breaker.maxOpenMs', s.openMs)
  return s
}
