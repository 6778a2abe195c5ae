import { setTimeout as sleep } from 'node:timers/promises'
import { jetstreamManager } from '@nats-io/jetstream'
import {
  DEFAULT_MAX_AGE_MS, IDEMPOTENCY_KEY_HEADER, InvalidOptionError, REPLAY_ORIGIN_HEADER, REPLAY_RESOURCE_HEADER, REPLAY_SEQ_HEADER, REPLAY_SIGNATURE_HEADER,
  connectNats, createEvent, createSigner, encodeEvent, ensureEventStream, names, parseStreamSettings, partitionOf,
  sealHeaders, serverMaxPayload, type MutationMethod, type Names, type Signer
} from '@regionsync/shared'
import type { FastifyInstance, FastifyReply, FastifyRequest, RouteOptions } from 'fastify'
import fp from 'fastify-plugin'
import type { Registry } from 'prom-client'
import { findCreatedId } from '@regionsync/shared'
import { EventPublisher, type Admission } from './event-publisher.js'
import { createPublisherMetrics, type PublisherMetrics } from './metrics.js'
import {
  DEFAULT_CREATED_ID, EVENT_ENVELOPE_RESERVE_BYTES, parseOptions, parseRouteConfig,
  type ParsedOptions, type ParsedRouteConfig, type RegionsyncPluginOptions, type RegionsyncRouteConfig
} from './options.js'
import { captureBody, replayStream } from './raw-body.js'
import { MAX_RECORDED_BODY_BYTES, ReplayGuard } from './replay-guard.js'
import { keyDepthOf, paramSegmentsOf, resourceKey } from './resource-key.js'
import { Spool } from './spool.js'

/** What the plugin exposes on the Fastify instance as `app.regionsync`. */
export interface RegionsyncDecorator {
  region: string
  /** The publisher's metrics; mount it on your own /metrics or merge it with your registry. */
  registry: Registry
  partitions: number
  maxBodyBytes: number
  /** Events in the outage spool, not yet in JetStream. */
  readonly spooled: number
}

declare module 'fastify' {
  interface FastifyInstance {
    regionsync: RegionsyncDecorator
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
  /** The reply object before serialization, when the handler sent one. */
  response: unknown
  /** Set for a genuine replay from a replicator: its event id. */
  replayOf: string | null
  admission: Admission | null
}

interface CoveredRoute extends ParsedRouteConfig {
  keyDepth: number | null
  defaultCreatedId: boolean
  /** Where the route's identifiers sit in its path, when the target assigns its own (translate). */
  idSegments: number[]
}

const kCapture = Symbol('regionsync.capture')
type CapturingRequest = FastifyRequest & { [kCapture]: Capture | null }
const captureOf = (request: FastifyRequest): Capture | null => (request as CapturingRequest)[kCapture]

/** Wait between attempts to record an applied replay while JetStream is unreachable. */
const RECORD_RETRY_MS = 250

const REFUSALS = {
  'spool-full': 'regionsync cannot take this write: the outage spool is full while JetStream is unreachable; nothing was changed',
  'too-many-in-flight': 'regionsync cannot take this write now: too many writes are in flight; nothing was changed',
  'replay-in-flight': 'regionsync is still applying this replay; nothing was changed'
} as const

const hasBody = (req: FastifyRequest): boolean =>
  req.headers['transfer-encoding'] !== undefined || (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0')

async function regionsyncPublisher (app: FastifyInstance, options: RegionsyncPluginOptions): Promise<void> {
  const o = parseOptions(options)
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
    // As many replicas as the stream has, whichever process made it.
    if (o.replayGuard) guard = await ReplayGuard.open(nc, n, o.region, (settings.maxAgeMs ?? DEFAULT_MAX_AGE_MS) + 86_400_000, stream.replicas)
    const serverLimit = Math.floor((serverMaxPayload(nc) - EVENT_ENVELOPE_RESERVE_BYTES) * 3 / 4)
    if (o.maxBodyBytes !== undefined && o.maxBodyBytes > serverLimit) {
      throw new InvalidOptionError('maxBodyBytes', `expects at most ${serverLimit} bytes, the largest body an event can carry on this NATS server (max_payload ${serverMaxPayload(nc)})`)
    }
    if (o.spool !== false) spool = Spool.open(o.spool.dir, o.spool.maxEvents)
  } catch (err) {
    if (o.connection === undefined) await nc.close()
    throw err
  }
  const maxBodyBytes = o.maxBodyBytes ?? Math.floor((serverMaxPayload(nc) - EVENT_ENVELOPE_RESERVE_BYTES) * 3 / 4)
  const metrics = createPublisherMetrics(o.registry)
  const publisher = new EventPublisher(
    { region: o.region, publishTimeoutMs: o.publishTimeoutMs, maxInFlight: o.maxInFlight, whenSpoolFull: o.whenSpoolFull },
    nc, spool, metrics, app.log)
  const events = new EventBuilder(o, n, signer, partitions)
  /** Event ids of replays between their replay-record lookup and their recorded answer. */
  const replaysInFlight = new Set<string>()
  let closing = false

  app.decorate('regionsync', {
    region: o.region,
    registry: metrics.registry,
    partitions,
    maxBodyBytes,
    get spooled () { return publisher.spooled }
  })
  app.decorateRequest(kCapture as unknown as string, null)

  app.addHook('onRoute', (route: RouteOptions) => {
    const methods = Array.isArray(route.method) ? route.method : [route.method]
    if (!methods.some((m) => o.methods.has(m.toUpperCase()))) return
    const config = parseRouteConfig((route.config as { regionsync?: unknown } | undefined)?.regionsync, route.url, o)
    if (config === null) return
    const covered: CoveredRoute = {
      ...config,
      keyDepth: keyDepthOf(route.url),
      defaultCreatedId: config.createdId === DEFAULT_CREATED_ID,
      idSegments: config.identity === 'translate' ? paramSegmentsOf(route.url) : []
    }

    route.preParsing = [...toArray(route.preParsing), async (request: FastifyRequest, reply: FastifyReply, payload: NodeJS.ReadableStream) => {
      if (!o.methods.has(request.method)) return payload
      const capture: Capture = { route: covered, body: null, response: undefined, replayOf: null, admission: null }
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
      capture.replayOf = genuineReplay(request, capture, signer)
      if (capture.replayOf !== null) {
        // Until its answer is recorded, the same event sent again (a replicator that timed out or
        // lost its own record) must not run the handler a second time. 429, not 503: the
        // replicator retries it after Retry-After without taking the target for down.
        if (replaysInFlight.has(capture.replayOf)) {
          capture.replayOf = null
          return await reply.code(429).header('retry-after', '1').send({ statusCode: 429, code: 'REGIONSYNC_E_UNAVAILABLE', error: 'Too Many Requests', message: REFUSALS['replay-in-flight'] })
        }
        // Owned by this request from here; onSend gives it back.
        replaysInFlight.add(capture.replayOf)
        const answer = guard === null ? null : await guard.lookup(capture.replayOf)
        if (answer !== null) {
          metrics.replaysReceived.inc({ region: o.region, outcome: 'duplicate' })
          replaysInFlight.delete(capture.replayOf)
          capture.replayOf = null
          if (answer.contentType !== null) reply.header('content-type', answer.contentType)
          return await reply.code(answer.status).send(Buffer.from(answer.body, 'base64'))
        }
        return
      }
      const admission = publisher.admit()
      if (typeof admission === 'string') {
        return await reply.code(503).header('retry-after', '5').send({ statusCode: 503, code: 'REGIONSYNC_E_UNAVAILABLE', error: 'Service Unavailable', message: REFUSALS[admission] })
      }
      capture.admission = admission
      reply.raw.once('close', admission.release)
    }] as RouteOptions['preHandler']

    route.preSerialization = [...toArray(route.preSerialization), async (request: FastifyRequest, _reply: FastifyReply, payload: unknown) => {
      const capture = captureOf(request)
      if (capture !== null) capture.response = payload
      return payload
    }] as RouteOptions['preSerialization']

    route.onSend = [...toArray(route.onSend), async (request: FastifyRequest, reply: FastifyReply, payload: unknown) => {
      const capture = captureOf(request)
      if (capture === null) return payload
      if (capture.replayOf !== null) {
        try {
          if (reply.statusCode >= 200 && reply.statusCode <= 299) {
            metrics.replaysReceived.inc({ region: o.region, outcome: 'applied' })
            await recordReplay(capture.replayOf, reply, payload)
          }
        } finally {
          replaysInFlight.delete(capture.replayOf)
        }
        return payload
      }
      if (reply.statusCode < 200 || reply.statusCode > 299) return payload
      if (capture.admission === null) return payload
      if (capture.admission.unreplicated) {
        metrics.unreplicated.inc({ region: o.region })
        request.log.error({ method: request.method, url: request.url }, 'regionsync spool full: write let through UNREPLICATED')
        return payload
      }
      try {
        await publisher.submit(events.build(request, reply, capture, payload))
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
      return payload
    }] as RouteOptions['onSend']
  })

  async function recordReplay (eventId: string, reply: FastifyReply, payload: unknown): Promise<void> {
    if (guard === null) return
    const body = typeof payload === 'string' ? Buffer.from(payload) : Buffer.isBuffer(payload) ? payload : Buffer.alloc(0)
    const type = reply.getHeader('content-type')
    const answer = {
      status: reply.statusCode,
      contentType: typeof type === 'string' ? type : null,
      body: body.length > MAX_RECORDED_BODY_BYTES ? '' : body.toString('base64')
    }
    // The write is committed: until the record holds, a redelivery would run it again. When
    // JetStream is unreachable the replicator cannot record it either, and cannot redeliver
    // before JetStream is back, so the answer waits for JetStream rather than going out unrecorded.
    for (;;) {
      try {
        await guard.record(eventId, answer)
        return
      } catch (err) {
        if (closing) {
          app.log.warn({ err, eventId }, 'regionsync could not record an applied replay')
          return
        }
        app.log.warn({ err, eventId }, 'regionsync could not record an applied replay yet; retrying')
        await sleep(RECORD_RETRY_MS)
      }
    }
  }

  if (o.metricsRoute !== false) {
    app.get(o.metricsRoute, { config: { regionsync: false } }, async (_req, reply) => {
      reply.header('content-type', metrics.registry.contentType)
      return await metrics.registry.metrics()
    })
  }

  // Set before the server waits for in-flight requests, so none waits on JetStream forever.
  app.addHook('preClose', async () => { closing = true })
  app.addHook('onClose', async () => {
    await publisher.close()
    guard?.close()
    if (o.connection === undefined && !nc.isClosed()) await nc.drain()
  })
}

function toArray<T> (v: T | T[] | undefined): T[] {
  return v === undefined ? [] : Array.isArray(v) ? v : [v]
}

/** A replay carries a signature only a replicator with the signing key can make (I6); its event id when genuine. */
function genuineReplay (request: FastifyRequest, capture: Capture, signer: Signer): string | null {
  const sig = request.headers[REPLAY_SIGNATURE_HEADER]
  const id = request.headers[IDEMPOTENCY_KEY_HEADER]
  const origin = request.headers[REPLAY_ORIGIN_HEADER]
  if (typeof sig !== 'string' || typeof id !== 'string' || typeof origin !== 'string') return null
  const seqHeader = request.headers[REPLAY_SEQ_HEADER]
  const seq = typeof seqHeader === 'string' && /^\d{1,15}$/.test(seqHeader) ? Number(seqHeader) : null
  const resourceHeader = request.headers[REPLAY_RESOURCE_HEADER]
  let resource = ''
  try {
    resource = typeof resourceHeader === 'string' ? decodeURIComponent(resourceHeader) : ''
  } catch {
    return null
  }
  return signer.verifyReplay({ eventId: id, origin, method: request.method, body: capture.body, seq, resource }, sig) ? id : null
}

/** Builds and signs the event of one committed write. */
class EventBuilder {
  constructor (
    private readonly o: ParsedOptions,
    private readonly n: Names,
    private readonly signer: Signer,
    private readonly partitions: number
  ) {}

  build (request: FastifyRequest, reply: FastifyReply, capture: Capture, payload: unknown): { subject: string, data: Uint8Array, signature: string, msgId: string } {
    const url = request.raw.url ?? request.url
    const q = url.indexOf('?')
    const path = q === -1 ? url : url.slice(0, q)
    const created = request.method === 'POST' ? this.createdOf(capture, reply, payload) : null
    const key = resourceKey(request, path, capture.route.keyDepth, capture.route.resource, () => parseBody(request, capture.body), created?.id ?? null)
    const event = createEvent({
      origin: this.o.region,
      method: request.method as MutationMethod,
      path,
      query: q === -1 ? '' : url.slice(q + 1),
      contentType: request.headers['content-type'] ?? null,
      body: capture.body,
      resource: key,
      headers: this.pick(request, this.o.headers),
      idSegments: capture.route.idSegments,
      created: created === null ? null : { ...created, mode: capture.route.identity }
    })
    if (this.o.encryptionKey !== undefined) {
      const forwarded = this.pick(request, this.o.forwardHeaders)
      if (Object.keys(forwarded).length > 0) event.sealedHeaders = sealHeaders(this.o.encryptionKey, event.id, forwarded)
    }
    const data = encodeEvent(event)
    return { subject: this.n.eventSubject(partitionOf(key, this.partitions), this.o.region), data, signature: this.signer.signEvent(data), msgId: event.id }
  }

  private createdOf (capture: Capture, reply: FastifyReply, payload: unknown): { id: string, field: string } | null {
    const field = capture.route.createdId
    if (field === false) return null
    let response = capture.response
    if (response === undefined && (typeof payload === 'string' || Buffer.isBuffer(payload))) {
      const type = reply.getHeader('content-type')
      if (typeof type !== 'string' || !type.includes('json')) return null
      try {
        response = JSON.parse(payload.toString())
      } catch {
        return null
      }
    }
    return findCreatedId(response, field, capture.route.defaultCreatedId)
  }

  private pick (request: FastifyRequest, names: readonly string[]): Record<string, string> {
    const out: Record<string, string> = {}
    for (const name of names) {
      const v = request.headers[name]
      if (typeof v === 'string') out[name] = v
    }
    return out
  }
}

/** The body as the client sent it, parsed when it is JSON, for resource key functions. */
function parseBody (request: FastifyRequest, body: Buffer | null): unknown {
  if (body === null) return undefined
  const type = request.headers['content-type'] ?? ''
  if (!type.includes('json')) return body
  try {
    return JSON.parse(body.toString('utf8'))
  } catch {
    return body
  }
}

export const regionsync = fp(regionsyncPublisher, { fastify: '4.x || 5.x', name: '@regionsync/publisher' })
