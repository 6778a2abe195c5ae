import { jetstream, jetstreamManager, type JetStreamClient } from '@nats-io/jetstream'
import { headers as natsHeaders } from '@nats-io/transport-node'
import {
  EVENT_SIGNATURE_HEADER, IDEMPOTENCY_KEY_HEADER, InvalidOptionError, REPLAY_ORIGIN_HEADER, REPLAY_SIGNATURE_HEADER,
  connectNats, createEvent, createSigner, encodeEvent, ensureEventStream, names, parseStreamSettings, partitionOf,
  serverMaxPayload, type MutationMethod, type Names, type Signer
} from '@regionsync/shared'
import type { FastifyInstance, FastifyReply, FastifyRequest, RouteOptions } from 'fastify'
import fp from 'fastify-plugin'
import type { Registry } from 'prom-client'
import { findCreatedId } from './created-id.js'
import { PublishError } from './errors.js'
import { createPublisherMetrics, type PublisherMetrics } from './metrics.js'
import {
  DEFAULT_CREATED_ID, EVENT_ENVELOPE_RESERVE_BYTES, parseOptions, parseRouteConfig,
  type ParsedOptions, type ParsedRouteConfig, type RegionsyncPluginOptions, type RegionsyncRouteConfig
} from './options.js'
import { captureBody, replayStream } from './raw-body.js'
import { keyDepthOf, resourceKey } from './resource-key.js'

/** What the plugin exposes on the Fastify instance as `app.regionsync`. */
export interface RegionsyncDecorator {
  region: string
  /** The publisher's metrics; mount it on your own /metrics or merge it with your registry. */
  registry: Registry
  partitions: number
  maxBodyBytes: number
}

declare module 'fastify' {
  interface FastifyInstance {
    regionsync: RegionsyncDecorator
  }
  interface FastifyContextConfig {
    regionsync?: false | RegionsyncRouteConfig
  }
}

/** What one covered request carries from preParsing to onSend. */
interface Capture {
  route: CoveredRoute
  /** Body bytes as the client sent them; null when the request had no body. */
  body: Buffer | null
  /** The reply object before serialization, when the handler sent one. */
  response: unknown
}

interface CoveredRoute extends ParsedRouteConfig {
  keyDepth: number | null
  defaultCreatedId: boolean
}

const kCapture = Symbol('regionsync.capture')
type CapturingRequest = FastifyRequest & { [kCapture]: Capture | null }

const hasBody = (req: FastifyRequest): boolean =>
  req.headers['transfer-encoding'] !== undefined || (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0')

async function regionsyncPublisher (app: FastifyInstance, options: RegionsyncPluginOptions): Promise<void> {
  const o = parseOptions(options)
  const signer = createSigner(o.signingKey, o.replayToleranceMs)
  if (o.dev) app.log.warn({ region: o.region }, 'regionsync dev mode: events are signed with a well-known key; never use this in production')

  const nc = o.connection ?? await connectNats({ name: `regionsync-publisher-${o.region}`, ...o.nats })
  const n = names(o.namespace)
  let partitions: number
  try {
    const jsm = await jetstreamManager(nc)
    partitions = (await ensureEventStream(nc, jsm, n, parseStreamSettings(o.stream))).partitions
  } catch (err) {
    if (o.connection === undefined) await nc.close()
    throw err
  }
  const serverLimit = Math.floor((serverMaxPayload(nc) - EVENT_ENVELOPE_RESERVE_BYTES) * 3 / 4)
  if (o.maxBodyBytes !== undefined && o.maxBodyBytes > serverLimit) {
    if (o.connection === undefined) await nc.close()
    throw new InvalidOptionError('maxBodyBytes', `expects at most ${serverLimit} bytes, the largest body an event can carry on this NATS server (max_payload ${serverMaxPayload(nc)})`)
  }
  const maxBodyBytes = o.maxBodyBytes ?? serverLimit
  const metrics = createPublisherMetrics(o.registry)
  const publisher = new EventPublisher(o, n, jetstream(nc), signer, metrics, partitions)

  app.decorate('regionsync', { region: o.region, registry: metrics.registry, partitions, maxBodyBytes })
  app.decorateRequest(kCapture as unknown as string, null)

  app.addHook('onRoute', (route: RouteOptions) => {
    const methods = Array.isArray(route.method) ? route.method : [route.method]
    if (!methods.some((m) => o.methods.has(m.toUpperCase()))) return
    const config = parseRouteConfig((route.config as { regionsync?: unknown } | undefined)?.regionsync, route.url, o)
    if (config === null) return
    const covered: CoveredRoute = {
      ...config,
      keyDepth: keyDepthOf(route.url),
      defaultCreatedId: config.createdId === DEFAULT_CREATED_ID
    }
    route.preParsing = [...toArray(route.preParsing), async (request: FastifyRequest, reply: FastifyReply, payload: NodeJS.ReadableStream) => {
      if (!o.methods.has(request.method)) return payload
      const capture: Capture = { route: covered, body: null, response: undefined }
      ;(request as CapturingRequest)[kCapture] = capture
      if (!hasBody(request)) return payload
      try {
        capture.body = await captureBody(payload, request.headers['content-length'], maxBodyBytes)
      } catch (err) {
        // As Fastify does for its own body limit: the client may still be sending the rest of the
        // body, so the connection cannot be reused; left open it also holds app.close() up.
        reply.header('connection', 'close')
        throw err
      }
      return replayStream(capture.body)
    }] as RouteOptions['preParsing']
    route.preSerialization = [...toArray(route.preSerialization), async (request: FastifyRequest, _reply: FastifyReply, payload: unknown) => {
      const capture = (request as CapturingRequest)[kCapture]
      if (capture !== null) capture.response = payload
      return payload
    }] as RouteOptions['preSerialization']
    route.onSend = [...toArray(route.onSend), async (request: FastifyRequest, reply: FastifyReply, payload: unknown) => {
      const capture = (request as CapturingRequest)[kCapture]
      if (capture === null || reply.statusCode < 200 || reply.statusCode > 299) return payload
      if (isGenuineReplay(request, capture, signer)) {
        metrics.replaysSkipped.inc({ region: o.region })
        return payload
      }
      try {
        await publisher.publish(request, reply, capture, payload)
      } catch (err) {
        request.log.error({ err, method: request.method, url: request.url }, 'regionsync could not publish a committed write')
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

  if (o.metricsRoute !== false) {
    app.get(o.metricsRoute, async (_req, reply) => {
      reply.header('content-type', metrics.registry.contentType)
      return await metrics.registry.metrics()
    })
  }

  app.addHook('onClose', async () => {
    if (o.connection === undefined && !nc.isClosed()) await nc.drain()
  })
}

function toArray<T> (v: T | T[] | undefined): T[] {
  return v === undefined ? [] : Array.isArray(v) ? v : [v]
}

/** A replay carries a signature only a replicator with the signing key can make (I6). */
function isGenuineReplay (request: FastifyRequest, capture: Capture, signer: Signer): boolean {
  const sig = request.headers[REPLAY_SIGNATURE_HEADER]
  const id = request.headers[IDEMPOTENCY_KEY_HEADER]
  const origin = request.headers[REPLAY_ORIGIN_HEADER]
  if (typeof sig !== 'string' || typeof id !== 'string' || typeof origin !== 'string') return false
  return signer.verifyReplay({ eventId: id, origin, method: request.method, body: capture.body }, sig)
}

/** Builds, signs and publishes the event of one committed write, awaiting JetStream's ack (I1). */
class EventPublisher {
  constructor (
    private readonly o: ParsedOptions,
    private readonly n: Names,
    private readonly js: JetStreamClient,
    private readonly signer: Signer,
    private readonly metrics: PublisherMetrics,
    private readonly partitions: number
  ) {}

  async publish (request: FastifyRequest, reply: FastifyReply, capture: Capture, payload: unknown): Promise<void> {
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
      headers: this.carriedHeaders(request),
      created: created === null ? null : { ...created, mode: capture.route.identity }
    })
    const data = encodeEvent(event)
    const h = natsHeaders()
    h.set(EVENT_SIGNATURE_HEADER, this.signer.signEvent(data))
    const started = process.hrtime.bigint()
    try {
      await this.js.publish(this.n.eventSubject(partitionOf(key, this.partitions), this.o.region), data, {
        msgID: event.id,
        headers: h,
        timeout: this.o.publishTimeoutMs
      })
    } catch (err) {
      this.metrics.publishFailures.inc({ region: this.o.region })
      throw new PublishError('JetStream did not acknowledge the event', { cause: err })
    }
    this.metrics.ackSeconds.observe({ region: this.o.region }, Number(process.hrtime.bigint() - started) / 1e9)
    this.metrics.published.inc({ region: this.o.region })
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

  private carriedHeaders (request: FastifyRequest): Record<string, string> {
    const out: Record<string, string> = {}
    for (const name of this.o.headers) {
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
