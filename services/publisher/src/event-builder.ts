import {
  createEvent, encodeEvent, findCreatedId, partitionOf, sealHeaders, type CreatedResource, type EventTrace, type MutationMethod, type Names, type Signer
} from '@regionsync/shared'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { ParsedOptions, ParsedRouteConfig } from './options.js'
import { resourceKey } from './resource-key.js'
import type { SpooledEvent } from './spool.js'

/** A covered route, as the event builder needs it. */
export interface CoveredRoute extends ParsedRouteConfig {
  keyDepth: number | null
  defaultCreatedId: boolean
  /** Where the route's identifiers sit in its path, when the target assigns its own (translate). */
  idSegments: number[]
}

/**
 * The identifier a create answered, read from the response as the client received it: the
 * serialized payload, after any response schema dropped fields. A POST whose response names no
 * identifier (a login, a follow, a favourite) is not a create. A streamed response is never read.
 */
export function createdOf (route: CoveredRoute, reply: FastifyReply, payload: unknown): { id: string, field: string } | null {
  if (route.createdId === false) return null
  if (typeof payload !== 'string' && !Buffer.isBuffer(payload)) return null
  const type = reply.getHeader('content-type')
  if (typeof type !== 'string' || !/[/+]json\b/i.test(type)) return null
  let response: unknown
  try {
    response = JSON.parse(payload.toString())
  } catch {
    return null
  }
  return findCreatedId(response, route.createdId, route.defaultCreatedId)
}

/** Builds and signs the event of one committed write. */
export class EventBuilder {
  readonly #o: ParsedOptions
  readonly #n: Names
  readonly #signer: Signer
  readonly #partitions: () => number | null

  /** `partitions` is null until the plugin has reached NATS; events built before then carry no subject. */
  constructor (o: ParsedOptions, n: Names, signer: Signer, partitions: () => number | null) {
    this.#o = o
    this.#n = n
    this.#signer = signer
    this.#partitions = partitions
  }

  build (request: FastifyRequest, reply: FastifyReply, route: CoveredRoute, body: Buffer | null, payload: unknown, trace: EventTrace | null = null): SpooledEvent {
    const url = request.raw.url ?? request.url
    const q = url.indexOf('?')
    const path = q === -1 ? url : url.slice(0, q)
    const found = request.method === 'POST' ? createdOf(route, reply, payload) : null
    const created: CreatedResource | null = found === null ? null : { ...found, mode: route.identity }
    const key = resourceKey(request, path, route.keyDepth, route.resource, () => parseBody(request, body), created?.id ?? null)
    const event = createEvent({
      origin: this.#o.region,
      method: request.method as MutationMethod,
      path,
      query: q === -1 ? '' : url.slice(q + 1),
      contentType: request.headers['content-type'] ?? null,
      body,
      resource: key,
      headers: pick(request, this.#o.headers),
      idSegments: route.idSegments,
      created,
      trace,
      ...(this.#o.sealBodies && this.#o.encryptionKey !== undefined ? { sealBodyWith: this.#o.encryptionKey } : {})
    })
    if (this.#o.encryptionKey !== undefined) {
      const forwarded = pick(request, this.#o.forwardHeaders)
      if (Object.keys(forwarded).length > 0) event.sealedHeaders = sealHeaders(this.#o.encryptionKey, event.id, forwarded)
    }
    const data = encodeEvent(event)
    const partitions = this.#partitions()
    const subject = partitions === null ? null : this.#n.eventSubject(partitionOf(key, partitions), this.#o.region)
    return { subject, key, data, signature: this.#signer.signEvent(data), msgId: event.id }
  }
}

function pick (request: FastifyRequest, names: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {}
  for (const name of names) {
    const v = request.headers[name]
    if (typeof v === 'string') out[name] = v
  }
  return out
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
