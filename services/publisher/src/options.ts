import type { NatsConnection } from '@nats-io/transport-node'
import { join } from 'node:path'
import {
  DEV_SIGNING_KEY, IDENTITY_MODES, InvalidOptionError, MUTATION_METHODS, parseEncryptionKey, parseSigningKeys, validateNamespace, validateRegion,
  DEFAULT_NAMESPACE, DEFAULT_REPLAY_TOLERANCE_MS,
  type IdentityMode, type MutationMethod, type NatsConnectOptions, type StreamSettings
} from '@regionsync/shared'
import type { FastifyRequest } from 'fastify'
import type { Registry } from 'prom-client'

/** A resource's type and id; events with the same pair apply in order in every region. */
export interface ResourceRef {
  type: string
  id: string
}

/**
 * Tells which resource a request writes. `body` is the body as the client sent it (parsed when it
 * is JSON), `createdId` the identifier a create's response gave, if any.
 */
export type ResourceKeyFn = (request: FastifyRequest, body: unknown, createdId: string | null) => ResourceRef

/** Per-route settings, under `config.regionsync`; `false` opts the route out. */
export interface RegionsyncRouteConfig {
  /** How to find the resource key. @default the path up to the route's first parameter, or to the created id */
  resource?: ResourceKeyFn
  /** Dotted path of the created identifier in a create's JSON response; `false` for none. @default 'id' */
  createdId?: string | false
  /** How the target learns the created identifier. @default 'inject' */
  identity?: IdentityMode
}

export const DEFAULT_PUBLISH_TIMEOUT_MS = 2000
export const DEFAULT_SPOOL_MAX_EVENTS = 100_000
export const DEFAULT_MAX_IN_FLIGHT = 1024
export const DEFAULT_CREATED_ID = 'id'
export const DEFAULT_IDENTITY: IdentityMode = 'inject'
/** Headers that hold end-user credentials; never carried in clear (I5). */
export const CREDENTIAL_HEADERS = ['authorization', 'proxy-authorization', 'x-auth-token', 'cookie', 'x-subject-token', 'x-api-key'] as const
/** Room kept in every event for everything but the body (path, query, headers, envelope). */
export const EVENT_ENVELOPE_RESERVE_BYTES = 64 * 1024

export interface RegionsyncPluginOptions {
  /** This API's region (required). */
  region: string
  /** How to connect to NATS; ignored when `connection` is given. @default { servers: 'nats://127.0.0.1:4222' } */
  nats?: NatsConnectOptions
  /** An existing connection; the plugin will not close it. */
  connection?: NatsConnection
  /**
   * Secret that signs events and verifies replays; required unless `dev` is true. A list (or a
   * comma-separated string) while keys rotate: events are signed with the first, replays verify
   * with any.
   */
  signingKey?: string | string[]
  /** Allow a fixed, insecure signing key for local development. Logged loudly. @default false */
  dev?: boolean
  /** Prefix of every stream, subject, consumer and bucket name. @default 'regionsync' */
  namespace?: string
  /** Event stream settings, used when the plugin is the first to create the stream. */
  stream?: Partial<StreamSettings>
  /** Methods that are mutations. @default ['POST', 'PUT', 'PATCH', 'DELETE'] */
  methods?: MutationMethod[]
  /** Extra non-credential request headers to carry to the targets (lower-case). @default [] */
  headers?: string[]
  /** Largest request body, in bytes. @default what the NATS server accepts, less the envelope */
  maxBodyBytes?: number
  /** How long to wait for JetStream's acknowledgement before spooling the event. @default 2000 */
  publishTimeoutMs?: number
  /** Default for routes' `createdId`. @default 'id' */
  createdId?: string | false
  /** Default for routes' `identity`. @default 'inject' */
  identity?: IdentityMode
  /** How old a replay signature may be and still be trusted. @default 300000 */
  replayToleranceMs?: number
  /** prom-client registry for the publisher's metrics. @default a new Registry, at `app.regionsync.registry` */
  registry?: Registry
  /** Serve the registry's metrics at this path; `false` for no route. @default false */
  metricsRoute?: string | false
  /**
   * The outage spool: where events wait, durable, while JetStream is unreachable. One directory per
   * API process. `false` turns it off: then a write whose event JetStream does not take gets 503.
   * @default { dir: '<cwd>/.regionsync/spool-<region>', maxEvents: 100000 }
   */
  spool?: { dir?: string, maxEvents?: number } | false
  /** With the spool full: refuse writes with 503 before their handler, or let them through unreplicated (logged, counted). @default 'reject' */
  whenSpoolFull?: 'reject' | 'allow-unreplicated'
  /** Writes being handled or published at once; more get 503 before their handler. @default 1024 */
  maxInFlight?: number
  /** Request headers, credentials included, to carry encrypted and replay as sent (for APIs whose writes are scoped to the caller). @default [] */
  forwardHeaders?: string[]
  /** AES-256-GCM key for `forwardHeaders`: 64 hex characters or base64 of 32 bytes. Required with them. */
  encryptionKey?: string
  /** Answer a duplicate replay from the record of the first, without running the handler. @default true */
  replayGuard?: boolean
  /**
   * Carry request bodies encrypted with `encryptionKey` (AES-256-GCM), so neither the broker nor
   * a dead letter holds a password or a token a body carries. Replicators need the same key.
   * @default false
   */
  sealBodies?: boolean
  /**
   * Route rules: what `config.regionsync` would say, for routes you do not want to edit. `url` is
   * a find-my-way pattern (`/api/articles/:slug/*`) matched against each route's registered url;
   * `method` one or more mutation methods (all when absent). The most specific pattern wins; a
   * route's own `config.regionsync` wins over any rule. @default []
   */
  routes?: RouteRule[]
  /** Log `app.regionsync.plan()` at ready, one line. @default false */
  logPlan?: boolean
}

/** One entry of the `routes` option. */
export interface RouteRule {
  method?: MutationMethod | MutationMethod[]
  url: string
  config: false | RegionsyncRouteConfig
}

export interface ParsedOptions {
  region: string
  nats: NatsConnectOptions
  connection: NatsConnection | undefined
  signingKey: string[]
  dev: boolean
  namespace: string
  stream: Partial<StreamSettings>
  methods: ReadonlySet<string>
  headers: readonly string[]
  maxBodyBytes: number | undefined
  publishTimeoutMs: number
  createdId: string | false
  identity: IdentityMode
  replayToleranceMs: number
  registry: Registry | undefined
  metricsRoute: string | false
  spool: { dir: string, maxEvents: number } | false
  whenSpoolFull: 'reject' | 'allow-unreplicated'
  maxInFlight: number
  forwardHeaders: readonly string[]
  encryptionKey: Buffer | undefined
  replayGuard: boolean
  sealBodies: boolean
  routes: ParsedRouteRule[]
  logPlan: boolean
}

export interface ParsedRouteRule {
  /** Where it came from, for errors and the plan: `routes[2]`. */
  name: string
  methods: MutationMethod[]
  url: string
  config: RouteConfigValue
}

const DOTTED_PATH_RE = /^[A-Za-z_$][\w$-]*(\.[A-Za-z_$][\w$-]*)*$/

export function parseOptions (opts: RegionsyncPluginOptions): ParsedOptions {
  if (opts === null || typeof opts !== 'object') throw new InvalidOptionError('options', 'expects an object with at least { region }')
  const region = validateRegion(opts.region)
  const dev = opts.dev === true
  if (opts.signingKey === undefined && !dev) {
    throw new InvalidOptionError('signingKey', 'is required (at least 32 characters); set dev: true only for local development')
  }
  const signingKey = opts.signingKey === undefined ? [DEV_SIGNING_KEY] : parseSigningKeys(opts.signingKey)
  const methods = opts.methods ?? [...MUTATION_METHODS]
  if (!Array.isArray(methods) || methods.length === 0 || !methods.every((m) => MUTATION_METHODS.includes(m))) {
    throw new InvalidOptionError('methods', `expects a non-empty list drawn from ${MUTATION_METHODS.join(', ')}`)
  }
  const headers = (opts.headers ?? []).map((h) => typeof h === 'string' ? h.toLowerCase() : h)
  if (!headers.every((h) => typeof h === 'string' && /^[a-z0-9-]+$/.test(h))) {
    throw new InvalidOptionError('headers', 'expects a list of header names')
  }
  const credential = headers.find((h) => (CREDENTIAL_HEADERS as readonly string[]).includes(h))
  if (credential !== undefined) {
    throw new InvalidOptionError('headers', `"${credential}" carries end-user credentials and is never captured in clear; replicators authenticate with their own credential`)
  }
  if (opts.maxBodyBytes !== undefined && (!Number.isInteger(opts.maxBodyBytes) || opts.maxBodyBytes < 1)) {
    throw new InvalidOptionError('maxBodyBytes', 'expects a whole number of bytes, at least 1')
  }
  const publishTimeoutMs = opts.publishTimeoutMs ?? DEFAULT_PUBLISH_TIMEOUT_MS
  if (!Number.isInteger(publishTimeoutMs) || publishTimeoutMs < 100) {
    throw new InvalidOptionError('publishTimeoutMs', 'expects milliseconds, at least 100')
  }
  const replayToleranceMs = opts.replayToleranceMs ?? DEFAULT_REPLAY_TOLERANCE_MS
  if (!Number.isInteger(replayToleranceMs) || replayToleranceMs < 1000) {
    throw new InvalidOptionError('replayToleranceMs', 'expects milliseconds, at least 1000')
  }
  const metricsRoute = opts.metricsRoute ?? false
  if (metricsRoute !== false && (typeof metricsRoute !== 'string' || !metricsRoute.startsWith('/'))) {
    throw new InvalidOptionError('metricsRoute', 'expects a path starting with "/" or false')
  }
  if (opts.connection !== undefined && (opts.connection === null || typeof opts.connection.isClosed !== 'function')) {
    throw new InvalidOptionError('connection', 'expects a NatsConnection from @nats-io/transport-node')
  }
  const forwardHeaders = (opts.forwardHeaders ?? []).map((h) => typeof h === 'string' ? h.toLowerCase() : h)
  if (!forwardHeaders.every((h) => typeof h === 'string' && /^[a-z0-9-]+$/.test(h))) {
    throw new InvalidOptionError('forwardHeaders', 'expects a list of header names')
  }
  if (forwardHeaders.length > 0 && opts.encryptionKey === undefined) {
    throw new InvalidOptionError('encryptionKey', 'is required with forwardHeaders: forwarded headers travel encrypted')
  }
  if (opts.sealBodies !== undefined && typeof opts.sealBodies !== 'boolean') throw new InvalidOptionError('sealBodies', 'expects true or false')
  if (opts.sealBodies === true && opts.encryptionKey === undefined) {
    throw new InvalidOptionError('encryptionKey', 'is required with sealBodies: sealed bodies are encrypted with it')
  }
  const encryptionKey = opts.encryptionKey === undefined ? undefined : parseEncryptionKey(opts.encryptionKey)
  if (opts.logPlan !== undefined && typeof opts.logPlan !== 'boolean') throw new InvalidOptionError('logPlan', 'expects true or false')
  if (opts.replayGuard !== undefined && typeof opts.replayGuard !== 'boolean') throw new InvalidOptionError('replayGuard', 'expects true or false')
  const whenSpoolFull = opts.whenSpoolFull ?? 'reject'
  if (whenSpoolFull !== 'reject' && whenSpoolFull !== 'allow-unreplicated') {
    throw new InvalidOptionError('whenSpoolFull', 'expects "reject" or "allow-unreplicated"')
  }
  const maxInFlight = opts.maxInFlight ?? DEFAULT_MAX_IN_FLIGHT
  if (!Number.isInteger(maxInFlight) || maxInFlight < 1) throw new InvalidOptionError('maxInFlight', 'expects a whole number, at least 1')
  return {
    region,
    nats: opts.nats ?? {},
    connection: opts.connection,
    signingKey,
    dev,
    namespace: validateNamespace(opts.namespace ?? DEFAULT_NAMESPACE),
    stream: opts.stream ?? {},
    methods: new Set(methods),
    headers,
    maxBodyBytes: opts.maxBodyBytes,
    publishTimeoutMs,
    createdId: parseCreatedId(opts.createdId ?? DEFAULT_CREATED_ID, 'createdId'),
    identity: parseIdentity(opts.identity ?? DEFAULT_IDENTITY, 'identity'),
    replayToleranceMs,
    registry: opts.registry,
    metricsRoute,
    spool: parseSpool(opts.spool, region),
    whenSpoolFull,
    maxInFlight,
    forwardHeaders,
    encryptionKey,
    replayGuard: opts.replayGuard ?? true,
    sealBodies: opts.sealBodies === true,
    routes: parseRouteRules(opts.routes),
    logPlan: opts.logPlan === true
  }
}

const ROUTE_RULE_KEYS = ['method', 'url', 'config']

function parseRouteRules (v: unknown): ParsedRouteRule[] {
  if (v === undefined) return []
  if (!Array.isArray(v)) throw new InvalidOptionError('routes', 'expects a list of { method, url, config }')
  return v.map((rule: unknown, i) => {
    const name = `routes[${i}]`
    if (rule === null || typeof rule !== 'object' || Array.isArray(rule)) throw new InvalidOptionError(name, 'expects { method, url, config }')
    const r = rule as Record<string, unknown>
    const unknown = Object.keys(r).filter((k) => !ROUTE_RULE_KEYS.includes(k))
    if (unknown.length > 0) throw new InvalidOptionError(name, `has unknown key(s) ${unknown.join(', ')}; expects method, url, config`)
    const methods = r.method === undefined ? [...MUTATION_METHODS] : Array.isArray(r.method) ? r.method : [r.method]
    if (methods.length === 0 || !methods.every((m) => MUTATION_METHODS.includes(m as MutationMethod))) {
      throw new InvalidOptionError(`${name}.method`, `expects one or a list of ${MUTATION_METHODS.join(', ')}`)
    }
    if (typeof r.url !== 'string' || !r.url.startsWith('/')) throw new InvalidOptionError(`${name}.url`, 'expects a route pattern starting with "/" (find-my-way syntax, e.g. /api/articles/:slug/*)')
    if (r.config === undefined) throw new InvalidOptionError(`${name}.config`, 'expects false or { resource, createdId, identity }')
    return { name, methods: methods as MutationMethod[], url: r.url, config: parseRouteConfigValue(r.config, `${name}.config`) }
  })
}

function parseSpool (v: RegionsyncPluginOptions['spool'], region: string): ParsedOptions['spool'] {
  if (v === false) return false
  if (v !== undefined && (v === null || typeof v !== 'object')) throw new InvalidOptionError('spool', 'expects { dir, maxEvents } or false')
  const dir = v?.dir ?? join(process.cwd(), '.regionsync', `spool-${region}`)
  if (typeof dir !== 'string' || dir === '') throw new InvalidOptionError('spool.dir', 'expects a directory path')
  const maxEvents = v?.maxEvents ?? DEFAULT_SPOOL_MAX_EVENTS
  if (!Number.isInteger(maxEvents) || maxEvents < 1) throw new InvalidOptionError('spool.maxEvents', 'expects a whole number, at least 1')
  return { dir, maxEvents }
}

export function parseCreatedId (v: unknown, option: string): string | false {
  if (v === false) return false
  if (typeof v !== 'string' || !DOTTED_PATH_RE.test(v)) {
    throw new InvalidOptionError(option, 'expects a dotted path into the JSON response (e.g. "id" or "user.id") or false')
  }
  return v
}

export function parseIdentity (v: unknown, option: string): IdentityMode {
  if (!IDENTITY_MODES.includes(v as IdentityMode)) throw new InvalidOptionError(option, `expects one of ${IDENTITY_MODES.join(', ')}`)
  return v as IdentityMode
}

export interface ParsedRouteConfig {
  resource: ResourceKeyFn | undefined
  createdId: string | false
  identity: IdentityMode
}

/** A validated `config.regionsync` (or a rule's `config`): false, or the keys it sets. */
export type RouteConfigValue = false | Partial<ParsedRouteConfig>

/** Validates what `config.regionsync` or a route rule's `config` says; `where` names it in errors. Unknown keys are errors. */
export function parseRouteConfigValue (value: unknown, where: string): RouteConfigValue {
  if (value === false) return false
  if (value === true) return {}
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new InvalidOptionError(where, 'expects false or { resource, createdId, identity }')
  const v = value as Record<string, unknown>
  const unknown = Object.keys(v).filter((k) => !['resource', 'createdId', 'identity'].includes(k))
  if (unknown.length > 0) throw new InvalidOptionError(where, `has unknown key(s) ${unknown.join(', ')}; expects resource, createdId, identity`)
  if (v.resource !== undefined && typeof v.resource !== 'function') throw new InvalidOptionError(`${where}.resource`, 'expects a function (request, body, createdId) => ({ type, id })')
  const out: Partial<ParsedRouteConfig> = {}
  if (v.resource !== undefined) out.resource = v.resource as ResourceKeyFn
  if (v.createdId !== undefined) out.createdId = parseCreatedId(v.createdId, `${where}.createdId`)
  if (v.identity !== undefined) out.identity = parseIdentity(v.identity, `${where}.identity`)
  return out
}

/** Fills what a route's settings leave out with the plugin's defaults. */
export function resolveRouteConfig (value: Partial<ParsedRouteConfig>, defaults: ParsedOptions): ParsedRouteConfig {
  return { resource: value.resource, createdId: value.createdId ?? defaults.createdId, identity: value.identity ?? defaults.identity }
}
