import { setTimeout as sleep } from 'node:timers/promises'
import { jetstreamManager } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import {
  DEFAULT_NATS_URL, InvalidOptionError, connectNats, createSigner, ensureEventStream, findCreatedId, loadOtel, names,
  parseStreamSettings, partitionOf, recordTtlMs, serverMaxPayload
} from '@regionsync/shared'
import type { FastifyInstance, FastifyReply, FastifyRequest, RouteOptions } from 'fastify'
import fp from 'fastify-plugin'
import type { Registry } from 'prom-client'
import { EventBuilder, type CoveredRoute } from './event-builder.js'
import { NotQueuedError, UnavailableError } from './errors.js'
import { EventPublisher, type Admission } from './event-publisher.js'
import { createPublisherMetrics } from './metrics.js'
import { DEFAULT_CREATED_ID, EVENT_ENVELOPE_RESERVE_BYTES, parseOptions, type RegionsyncPluginOptions, type RegionsyncRouteConfig } from './options.js'
import { planRow, type PlanRow } from './plan.js'
import { captureBody, replayStream } from './raw-body.js'
import { ReplayGuard, type Claim } from './replay-guard.js'
import { ReplayHandling, genuineReplay } from './replay-handling.js'
import { keyDepthOf, paramSegmentsOf } from './resource-key.js'
import { RouteRules } from './route-rules.js'
import { PublishTracing } from './publish-tracing.js'
import { Spool, type SpooledEvent } from './spool.js'

/**
 * The Fastify versions the plugin runs on, checked by Fastify at register (it names the version
 * it found). 4.16 is the first with the preClose hook, which lets in-flight requests stop waiting
 * on JetStream at shutdown; the differential test (test/fastify4/differential.test.ts) runs on
 * 4.16, the latest 4.x and 5.x.
 */
export const FASTIFY_RANGE = '>=4.16.0 <6'

/** What the plugin exposes on the Fastify instance as `app.regionsync`. */
export interface RegionsyncDecorator {
  region: string
  /** The publisher's metrics; mount it on your own /metrics or merge it with your registry. */
  registry: Registry
  /** False while the plugin has not yet reached NATS (it registered during an outage; writes spool). */
  readonly connected: boolean
  /** The event stream's partitions; 0 until connected. */
  readonly partitions: number
  /** The largest body a write may have: the event limit of the NATS server (1 MiB max_payload assumed until connected). */
  readonly maxBodyBytes: number
  /** Events in the outage spool, not yet in JetStream. */
  readonly spooled: number
  /** One row per route registered after the plugin: replicated or not and why, key rule, create, identity. */
  plan: () => PlanRow[]
}

/**
 * What the plugin tells a handler about a request that is a genuine replay from another region: set
 * only after the replay's signature verified (so a client cannot set it), null on every other
 * request. A create handler takes the source's id from it, so the entity has the same id in every
 * region: `const id = request.regionsync?.createdId ?? randomUUID()`.
 */
export interface RegionsyncReplay {
  /** The event this request replays (its Idempotency-Key). */
  eventId: string
  /** The region the write was made in. */
  origin: string
  /**
   * On a replayed create (a POST on a route with `createdId`), the id the source region gave the
   * entity, as the replicator put it into the signed body; null otherwise.
   */
  createdId: string | null
}

declare module 'fastify' {
  interface FastifyInstance {
    regionsync: RegionsyncDecorator
  }
  interface FastifyRequest {
    regionsync: RegionsyncReplay | null
  }
  interface FastifyContextConfig {
    regionsync?: false | RegionsyncRouteConfig
  }
}

/** What one covered request carries from hook to hook. */
interface Capture {
  route: CoveredRoute
  /** Body bytes as the client sent them; null when the request had no body. */
  body: Buffer | null
  /** A genuine replay's claim, to settle once it is answered. */
  claim: Claim | null
  /** Set for a genuine replay: it is applied, never published (I6). */
  replay: boolean
  admission: Admission | null
  /** The onSend work the reply waits on (publish, record), while it runs. */
  sending: Promise<void> | null
}

const kCapture = Symbol('regionsync.capture')
type CapturingRequest = FastifyRequest & { [kCapture]: Capture | null }
const captureOf = (request: FastifyRequest): Capture | null => (request as CapturingRequest)[kCapture]

/** NATS's default max_payload, assumed for the body limit until the server tells its own. */
const DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
/** Between attempts to reach NATS when the plugin registered without it. */
const BACKGROUND_CONNECT_RETRY_MS = 1000

/** The largest body an event can carry under a server's max_payload (events carry the body as base64). */
const bodyLimit = (maxPayload: number): number => Math.floor((maxPayload - EVENT_ENVELOPE_RESERVE_BYTES) * 3 / 4)

function serversOf (nats: { servers?: string | string[] }): string {
  const s = nats.servers ?? DEFAULT_NATS_URL
  return Array.isArray(s) ? s.join(',') : s
}

const REFUSALS = {
  'spool-full': 'regionsync cannot take this write: the outage spool is full while JetStream is unreachable; nothing was changed',
  'too-many-in-flight': 'regionsync cannot take this write now: too many writes are in flight; nothing was changed'
} as const

const hasBody = (req: FastifyRequest): boolean =>
  req.headers['transfer-encoding'] !== undefined || (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0')

type OnSendDone = (err: Error | null, payload?: unknown) => void
type Handler = (this: FastifyInstance, request: FastifyRequest, reply: FastifyReply) => unknown

/**
 * Fastify (4 at least) sends again when an async handler that called `reply.send()` without
 * returning it resolves while an onSend hook is still running (the reply is not `sent` yet): two
 * sends, ERR_HTTP_HEADERS_SENT, the process gone. Our onSend must wait on JetStream before a 2xx
 * leaves, so the handler's promise is held until that wait is over and the reply is out, which is
 * what the handler's promise means without the plugin.
 */
function holdUntilSent (handler: Handler): Handler {
  return function (this: FastifyInstance, request: FastifyRequest, reply: FastifyReply): unknown {
    const result = handler.call(this, request, reply)
    if (result === null || typeof result !== 'object' || typeof (result as Promise<unknown>).then !== 'function') return result
    return (result as Promise<unknown>).then(
      async (payload) => {
        if (payload === undefined) await captureOf(request)?.sending
        return payload
      },
      async (err: unknown) => {
        await captureOf(request)?.sending
        throw err
      })
  }
}

async function regionsyncPublisher (app: FastifyInstance, options: RegionsyncPluginOptions): Promise<void> {
  const o = parseOptions(options)
  const rules = new RouteRules(o)
  const signer = createSigner(o.signingKey, o.replayToleranceMs)
  const tracing = new PublishTracing(await loadOtel(), o.region)
  if (o.dev) app.log.warn({ region: o.region }, 'regionsync dev mode: events are signed with a well-known key; never use this in production')

  const n = names(o.namespace)
  const settings = parseStreamSettings(o.stream)
  const metrics = createPublisherMetrics(o.registry)
  const spool = o.spool === false ? null : Spool.open(o.spool.dir, o.spool.maxEvents)
  const publisher = new EventPublisher(
    { region: o.region, publishTimeoutMs: o.publishTimeoutMs, maxInFlight: o.maxInFlight, whenSpoolFull: o.whenSpoolFull },
    spool, metrics, app.log)

  // Set once NATS was reached and the stream set up (the partition count, the replay guard and
  // the body limit come from there). Until then writes spool and replays are answered 503.
  let nc: NatsConnection | null = null
  let partitions: number | null = null
  let guard: ReplayGuard | null = null
  let maxBodyBytes = o.maxBodyBytes ?? bodyLimit(DEFAULT_MAX_PAYLOAD_BYTES)
  let closing = false
  let closed = false

  /** Stream, partitions, replay guard and body limit on a fresh connection; throws a configuration error as is. */
  async function setUp (conn: NatsConnection): Promise<void> {
    let g: ReplayGuard | null = null
    try {
      const jsm = await jetstreamManager(conn)
      const stream = await ensureEventStream(conn, jsm, n, settings)
      if (o.replayGuard) {
        // An answer or a fence must outlive every delivery of its event: the stream's age, and a day.
        // As many replicas as the stream has, whichever process made it.
        g = await ReplayGuard.open(conn, n, { region: o.region, recordTtlMs: recordTtlMs(settings.maxAgeMs), replicas: stream.replicas })
        if (!g.perKeyTtl) {
          app.log.info({ server: conn.info?.version }, 'regionsync replay guard: this nats-server has no per-key TTLs (2.11+); released claims are kept for the bucket TTL')
        }
      }
      const serverLimit = bodyLimit(serverMaxPayload(conn))
      if (o.maxBodyBytes !== undefined && o.maxBodyBytes > serverLimit) {
        throw new InvalidOptionError('maxBodyBytes', `expects at most ${serverLimit} bytes, the largest body an event can carry on this NATS server (max_payload ${serverMaxPayload(conn)})`)
      }
      maxBodyBytes = o.maxBodyBytes ?? serverLimit
      guard = g
      partitions = stream.partitions
      nc = conn
      const count = stream.partitions
      publisher.attach(conn, (key) => n.eventSubject(partitionOf(key, count), o.region))
    } catch (err) {
      g?.close()
      throw err
    }
  }

  // A register that fails leaves nothing open: the spool's lock would stop the next attempt.
  const failed = async (err: unknown, conn: NatsConnection | null): Promise<never> => {
    await publisher.close()
    await conn?.close()
    throw err
  }
  if (o.connection !== undefined) {
    await setUp(o.connection).catch(async (err) => await failed(err, null))
  } else {
    let first: NatsConnection | null = null
    try {
      first = await connectNats({ name: `regionsync-publisher-${o.region}`, ...o.nats })
    } catch (err) {
      if (spool === null) {
        return await failed(new InvalidOptionError('nats.servers', `cannot reach NATS at ${serversOf(o.nats)} (${(err as Error).message}); with spool: false the plugin needs NATS to start`, { cause: err }), null)
      }
      app.log.warn({ err, servers: serversOf(o.nats) }, 'regionsync cannot reach NATS; serving, spooling writes, connecting in the background')
    }
    if (first !== null) {
      const conn = first
      await setUp(conn).catch(async (err) => await failed(err, conn))
    } else {
      connectInBackground().catch((err: unknown) => { app.log.error({ err }, 'regionsync background connect ended') })
    }
  }

  /** Until NATS answers and the stream is set up; a setup that fails (a stream mismatch) is logged and retried. */
  async function connectInBackground (): Promise<void> {
    while (!closed) {
      await sleep(BACKGROUND_CONNECT_RETRY_MS, undefined, { ref: false })
      if (closed) return
      let conn: NatsConnection
      try {
        conn = await connectNats({ name: `regionsync-publisher-${o.region}`, ...o.nats })
      } catch {
        continue
      }
      try {
        if (closed) throw new Error('closed')
        await setUp(conn)
        app.log.info({ partitions, spooled: publisher.spooled }, 'regionsync reached NATS; draining the spool')
        return
      } catch (err) {
        if (!closed) app.log.error({ err }, 'regionsync reached NATS but could not set up the stream; writes keep spooling')
        await conn.close().catch(() => {})
      }
    }
  }

  const events = new EventBuilder(o, n, signer, () => partitions)
  const replays = new ReplayHandling(() => guard, metrics, o.region, app.log, () => closing)
  const plan: PlanRow[] = []

  app.decorate('regionsync', {
    region: o.region,
    registry: metrics.registry,
    get connected () { return nc !== null },
    get partitions () { return partitions ?? 0 },
    get maxBodyBytes () { return maxBodyBytes },
    get spooled () { return publisher.spooled },
    plan: () => plan.map((row) => ({ ...row }))
  })
  app.decorateRequest(kCapture as unknown as string, null)
  app.decorateRequest('regionsync', null)

  app.addHook('onRoute', (route: RouteOptions) => {
    const methods = (Array.isArray(route.method) ? route.method : [route.method]).map((m) => m.toUpperCase())
    const own = (route.config as { regionsync?: unknown } | undefined)?.regionsync
    const covered = new Map<string, CoveredRoute>()
    for (const method of methods) {
      const decision = rules.decide(method, route.url, own)
      const config = decision.config
      const c: CoveredRoute | null = config === null
        ? null
        : {
            ...config,
            keyDepth: keyDepthOf(route.url),
            defaultCreatedId: config.createdId === DEFAULT_CREATED_ID,
            idSegments: config.identity === 'translate' ? paramSegmentsOf(route.url) : []
          }
      if (c !== null) covered.set(method, c)
      plan.push(planRow(method, route.url, c, decision.why))
    }
    if (covered.size === 0) return

    route.handler = holdUntilSent(route.handler as Handler) as RouteOptions['handler']

    route.preParsing = [...toArray(route.preParsing), async (request: FastifyRequest, reply: FastifyReply, payload: NodeJS.ReadableStream) => {
      const c = covered.get(request.method)
      if (c === undefined) return payload
      const capture: Capture = { route: c, body: null, claim: null, replay: false, admission: null, sending: null }
      ;(request as CapturingRequest)[kCapture] = capture
      if (!hasBody(request)) return payload
      try {
        capture.body = await captureBody(payload, request.headers['content-length'], maxBodyBytes)
      } catch (err) {
        // The client may still be sending; as Fastify does for its own body limit, do not keep the socket.
        reply.header('connection', 'close')
        throw err
      }
      return replayStream(capture.body)
    }] as RouteOptions['preParsing']

    // Last before the handler: decide whether the write may run at all.
    route.preHandler = [...toArray(route.preHandler), async (request: FastifyRequest, reply: FastifyReply) => {
      const capture = captureOf(request)
      if (capture === null) return
      const replay = genuineReplay(request, capture.body, signer)
      if (replay !== null) {
        capture.replay = true
        request.regionsync = { eventId: replay.eventId, origin: replay.origin, createdId: replayedCreatedId(request, capture.route) }
        if (!o.replayGuard) {
          replays.appliedUnguarded()
          return
        }
        capture.claim = await replays.before(replay, capture.body, reply)
        return
      }
      const admission = publisher.admit()
      if (typeof admission === 'string') {
        reply.header('retry-after', '5')
        throw new UnavailableError(REFUSALS[admission])
      }
      capture.admission = admission
      reply.raw.once('close', admission.release)
    }] as RouteOptions['preHandler']

    // A callback, and done() called at once whenever there is nothing to wait for: a reply the
    // plugin does not publish or record leaves exactly when it would without the plugin.
    route.onSend = [...toArray(route.onSend), (request: FastifyRequest, reply: FastifyReply, payload: unknown, done: OnSendDone) => {
      const capture = captureOf(request)
      const work = capture === null ? null : afterHandler(capture, request, reply, payload)
      if (capture === null || work === null) {
        done(null, payload)
        return
      }
      capture.sending = work
        .then((out) => { done(null, out) }, (err: Error) => { done(err) })
        // Fastify writing the reply failed (the socket went, a hook of the app's sent meanwhile):
        // nothing left to answer, and an unhandled rejection would end the process.
        .catch((err: unknown) => { request.log.error({ err }, 'regionsync could not hand a reply back to Fastify') })
    }] as RouteOptions['onSend']
  })

  /** The onSend work of one covered reply, resolving to the payload to send; null when there is none. */
  function afterHandler (capture: Capture, request: FastifyRequest, reply: FastifyReply, payload: unknown): Promise<unknown> | null {
    if (capture.claim !== null) {
      const claim = capture.claim
      capture.claim = null
      return replays.after(claim, reply, payload).then(() => payload)
    }
    if (capture.replay || capture.admission === null) return null
    if (reply.statusCode < 200 || reply.statusCode > 299) return null
    if (capture.admission.unreplicated) {
      metrics.unreplicated.inc({ region: o.region })
      request.log.error({ method: request.method, url: request.url }, 'regionsync spool full: write let through UNREPLICATED')
      return null
    }
    return publishCommitted(capture, request, reply, payload)
  }

  async function publishCommitted (capture: Capture, request: FastifyRequest, reply: FastifyReply, payload: unknown): Promise<unknown> {
    const traced = tracing.start(request)
    let event: SpooledEvent | null = null
    try {
      event = events.build(request, reply, capture.route, capture.body, payload, traced.trace)
      await publisher.submit(event)
      traced.end(event)
      return payload
    } catch (err) {
      traced.end(event, err)
      request.log.error({ err, method: request.method, url: request.url }, 'regionsync could not publish or spool a committed write')
      reply.header('retry-after', '1')
      throw new NotQueuedError('the write was applied in this region but could not be queued for the other regions; it is not acknowledged', { cause: err })
    }
  }

  if (o.metricsRoute !== false) {
    app.get(o.metricsRoute, { config: { regionsync: false } }, async (_req, reply) => {
      reply.header('content-type', metrics.registry.contentType)
      return await metrics.registry.metrics()
    })
  }

  if (o.logPlan) app.addHook('onReady', async () => { app.log.info({ plan }, 'regionsync replication plan') })
  // Set before the server waits for in-flight requests, so none waits on JetStream forever.
  app.addHook('preClose', async () => { closing = true })
  app.addHook('onClose', async () => {
    closed = true
    await publisher.close()
    guard?.close()
    // Drain refuses while NATS is down; what the publisher did not send is in the spool already.
    const own = o.connection === undefined ? nc : null
    if (own !== null && !own.isClosed()) await own.drain().catch(async () => { await own.close() })
  })
}

/** The source's id in a replayed create's body (covered by the replay's signature), where the route's `createdId` says it is. */
function replayedCreatedId (request: FastifyRequest, route: CoveredRoute): string | null {
  if (request.method !== 'POST' || route.createdId === false) return null
  return findCreatedId(request.body, route.createdId, route.defaultCreatedId)?.id ?? null
}

function toArray<T> (v: T | T[] | undefined): T[] {
  return v === undefined ? [] : Array.isArray(v) ? v : [v]
}

/**
 * The plugin's public type takes any Fastify instance: typed with this package's own Fastify (5 in
 * the monorepo), a Fastify 4 app's `register` would refuse it without a cast, though it runs on
 * both (test/fastify4/register-types.ts checks that it registers on 4 as it is).
 */
export type RegionsyncPlugin = (instance: unknown, options: RegionsyncPluginOptions) => Promise<void>

export const regionsync = fp(regionsyncPublisher, { fastify: FASTIFY_RANGE, name: '@regionsync/publisher' }) as unknown as RegionsyncPlugin
