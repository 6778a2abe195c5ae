import { jetstreamManager } from '@nats-io/jetstream'
import {
  DEFAULT_MAX_AGE_MS, InvalidOptionError, connectNats, createSigner, ensureEventStream, findCreatedId, names, parseStreamSettings, serverMaxPayload
} from '@regionsync/shared'
import type { FastifyInstance, FastifyReply, FastifyRequest, RouteOptions } from 'fastify'
import fp from 'fastify-plugin'
import type { Registry } from 'prom-client'
import { EventBuilder, type CoveredRoute } from './event-builder.js'
import { EventPublisher, type Admission } from './event-publisher.js'
import { createPublisherMetrics } from './metrics.js'
import { DEFAULT_CREATED_ID, EVENT_ENVELOPE_RESERVE_BYTES, parseOptions, type RegionsyncPluginOptions, type RegionsyncRouteConfig } from './options.js'
import { planRow, type PlanRow } from './plan.js'
import { captureBody, replayStream } from './raw-body.js'
import { ReplayGuard, type Claim } from './replay-guard.js'
import { ReplayHandling, genuineReplay } from './replay-handling.js'
import { keyDepthOf, paramSegmentsOf } from './resource-key.js'
import { RouteRules } from './route-rules.js'
import { Spool } from './spool.js'

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
  partitions: number
  maxBodyBytes: number
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
  if (o.dev) app.log.warn({ region: o.region }, 'regionsync dev mode: events are signed with a well-known key; never use this in production')

  const nc = o.connection ?? await connectNats({ name: `regionsync-publisher-${o.region}`, ...o.nats })
  const n = names(o.namespace)
  let partitions: number
  let guard: ReplayGuard | null = null
  let spool: Spool | null = null
  const settings = parseStreamSettings(o.stream)
  try {
    const jsm = await jetstreamManager(nc)
    const stream = await ensureEventStream(nc, jsm, n, settings)
    partitions = stream.partitions
    if (o.replayGuard) {
      // An answer or a fence must outlive every delivery of its event: the stream's age, and a day.
      // As many replicas as the stream has, whichever process made it.
      guard = await ReplayGuard.open(nc, n, { region: o.region, recordTtlMs: (settings.maxAgeMs ?? DEFAULT_MAX_AGE_MS) + 86_400_000, replicas: stream.replicas })
      if (!guard.perKeyTtl) {
        app.log.info({ server: nc.info?.version }, 'regionsync replay guard: this nats-server has no per-key TTLs (2.11+); released claims are kept for the bucket TTL')
      }
    }
    const serverLimit = Math.floor((serverMaxPayload(nc) - EVENT_ENVELOPE_RESERVE_BYTES) * 3 / 4)
    if (o.maxBodyBytes !== undefined && o.maxBodyBytes > serverLimit) {
      throw new InvalidOptionError('maxBodyBytes', `expects at most ${serverLimit} bytes, the largest body an event can carry on this NATS server (max_payload ${serverMaxPayload(nc)})`)
    }
    if (o.spool !== false) spool = Spool.open(o.spool.dir, o.spool.maxEvents)
  } catch (err) {
    guard?.close()
    if (o.connection === undefined) await nc.close()
    throw err
  }
  const maxBodyBytes = o.maxBodyBytes ?? Math.floor((serverMaxPayload(nc) - EVENT_ENVELOPE_RESERVE_BYTES) * 3 / 4)
  const metrics = createPublisherMetrics(o.registry)
  const publisher = new EventPublisher(
    { region: o.region, publishTimeoutMs: o.publishTimeoutMs, maxInFlight: o.maxInFlight, whenSpoolFull: o.whenSpoolFull },
    nc, spool, metrics, app.log)
  const events = new EventBuilder(o, n, signer, partitions)
  let closing = false
  const replays = new ReplayHandling(guard, metrics, o.region, app.log, () => closing)
  const plan: PlanRow[] = []

  app.decorate('regionsync', {
    region: o.region,
    registry: metrics.registry,
    partitions,
    maxBodyBytes,
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
        if (guard === null) {
          replays.appliedUnguarded()
          return
        }
        capture.claim = await replays.before(replay, capture.body, reply)
        return
      }
      const admission = publisher.admit()
      if (typeof admission === 'string') {
        await reply.code(503).header('retry-after', '5').send({ statusCode: 503, code: 'REGIONSYNC_E_UNAVAILABLE', error: 'Service Unavailable', message: REFUSALS[admission] })
        return
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
    try {
      await publisher.submit(events.build(request, reply, capture.route, capture.body, payload))
      return payload
    } catch (err) {
      request.log.error({ err, method: request.method, url: request.url }, 'regionsync could not publish or spool a committed write')
      reply.code(503).header('content-type', 'application/json; charset=utf-8').header('retry-after', '1')
      return JSON.stringify({
        statusCode: 503,
        code: (err as { code?: string }).code ?? 'REGIONSYNC_E_PUBLISH',
        error: 'Service Unavailable',
        message: 'the write was applied in this region but could not be queued for the other regions; it is not acknowledged'
      })
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
    await publisher.close()
    guard?.close()
    if (o.connection === undefined && !nc.isClosed()) await nc.drain()
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

export const regionsync = fp(regionsyncPublisher, { fastify: FASTIFY_RANGE, name: '@regionsync/publisher' })
