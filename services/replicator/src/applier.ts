import {
  IDEMPOTENCY_KEY_HEADER, REPLAY_ORIGIN_HEADER, REPLAY_RESOURCE_HEADER, REPLAY_SEQ_HEADER, REPLAY_SIGNATURE_HEADER, WEBHOOK_ID_HEADER, WEBHOOK_SIGNATURE_HEADER,
  WEBHOOK_TIMESTAMP_HEADER, TRACEPARENT_HEADER, TRACESTATE_HEADER, TargetUnreachableError, UndecryptableError, childTraceparent, errorCodeOf, openEventBody, openHeaders, type EventTrace, type RegionsyncEvent, type Signer
} from '@regionsync/shared'
import { Pool } from 'undici'
import { targetPath } from './target-path.js'

export const USER_AGENT = 'regionsync-replicator/0.1'
export const BODY_EXCERPT_BYTES = 512

export interface TargetSettings {
  /** Base URL of the region's API; a path in it is kept as a prefix. */
  url: URL
  /** Sent as `Authorization: Bearer <token>`. */
  token: string | undefined
  /** The answer's headers, and then each part of its body, must arrive within this. @default 10000 */
  timeoutMs: number
  /** Keep-alive connections to the target. @default the replicator's concurrency (256) */
  connections: number
  /** Opens headers the publisher forwarded sealed; without it such events cannot be replayed. */
  encryptionKey?: Buffer | undefined
}

export interface Replay {
  method: string
  path: string
  headers: Record<string, string>
  body: Buffer | null
  /** The event's trace context, the parent of the replay's span; null when the source had none. */
  trace: EventTrace | null
}

export interface ReplayResult {
  status: number
  headers: Record<string, string | string[] | undefined>
  /** First bytes of the body of an unsuccessful answer, for the dead letter. */
  excerpt: string
  /** The parsed JSON body of a successful answer, when it was asked for. */
  json?: unknown
}

/**
 * Turns an event into the request the target gets (I4, I5, I8): path checked against the target's
 * base, the create's identifier put where the target will keep it, the region's own credential,
 * and the replay headers.
 */
export function buildReplay (event: RegionsyncEvent, target: TargetSettings, signer: Signer, seq: number | null = null, nowMs = Date.now()): Replay {
  const basePath = target.url.pathname.replace(/\/+$/, '')
  let method: string = event.method
  let path = event.path
  let body = openBody(event, target.encryptionKey)
  const created = event.created
  if (created !== null && created.mode === 'put') {
    method = 'PUT'
    path = `${path.replace(/\/+$/, '')}/${encodeURIComponent(created.id)}`
  } else if (created !== null && created.mode === 'inject' && body !== null && isJson(event.contentType)) {
    body = injectId(body, created.field, created.id)
  }
  // Copied, then set one by one: `{ ...event.headers, 'user-agent': ... }` is built in slow mode by
  // V8 (about 2 us a replay in a micro-benchmark on Node 20).
  const headers: Record<string, string> = Object.assign({}, event.headers)
  headers['user-agent'] = USER_AGENT
  headers[IDEMPOTENCY_KEY_HEADER] = event.id
  headers[REPLAY_ORIGIN_HEADER] = event.origin
  headers[REPLAY_RESOURCE_HEADER] = encodeURIComponent(event.resource)
  headers[REPLAY_SIGNATURE_HEADER] = signer.signReplay({ eventId: event.id, origin: event.origin, method, body, seq, resource: event.resource }, nowMs)
  // Standard Webhooks, for targets without our plugin; signed per attempt (as our own header is),
  // so a replay retried later is inside the receiver's timestamp tolerance.
  const timestampSec = Math.floor(nowMs / 1000)
  headers[WEBHOOK_ID_HEADER] = event.id
  headers[WEBHOOK_TIMESTAMP_HEADER] = String(timestampSec)
  headers[WEBHOOK_SIGNATURE_HEADER] = signer.signWebhook(event.id, timestampSec, body)
  if (seq !== null) headers[REPLAY_SEQ_HEADER] = String(seq)
  const trace = event.trace ?? null
  if (trace !== null) {
    // The replay is a child of the source's trace; with an SDK, its span (replay-tracing.ts) takes this place.
    headers[TRACEPARENT_HEADER] = childTraceparent(trace.traceparent) as string
    if (trace.tracestate !== undefined) headers[TRACESTATE_HEADER] = trace.tracestate
  }
  if (event.contentType !== null) headers['content-type'] = event.contentType
  if (target.token !== undefined) headers.authorization = `Bearer ${target.token}`
  if (event.sealedHeaders !== null) {
    if (target.encryptionKey === undefined) throw new UndecryptableError('event carries forwarded headers and this replicator has no encryption key')
    // The operator forwarded these because the target must see the caller's own: they win.
    Object.assign(headers, openHeaders(target.encryptionKey, event.id, event.sealedHeaders))
  }
  return { method, path: targetPath(basePath, path, event.query), headers, body, trace }
}

/** The body as the client sent it; a sealed one (publisher option sealBodies) opened with the region's key. */
function openBody (event: RegionsyncEvent, key: Buffer | undefined): Buffer | null {
  if (event.bodyEncoding === 'sealed' && key === undefined) throw new UndecryptableError('event carries a sealed body and this replicator has no encryption key')
  try {
    return openEventBody(event, key)
  } catch (err) {
    throw new UndecryptableError((err as Error).message, { cause: err })
  }
}

function isJson (contentType: string | null): boolean {
  return contentType !== null && /[/+]json\b/i.test(contentType)
}

/** Sets `field` (dotted) in a JSON body to the source's id; a body that is not an object is left alone. */
function injectId (body: Buffer, field: string, id: string): Buffer {
  let doc: unknown
  try {
    doc = JSON.parse(body.toString('utf8'))
  } catch {
    return body
  }
  const parts = field.split('.')
  let cur = doc
  for (const part of parts.slice(0, -1)) {
    if (cur === null || typeof cur !== 'object' || Array.isArray(cur)) return body
    const obj = cur as Record<string, unknown>
    if (obj[part] === undefined) obj[part] = {}
    cur = obj[part]
  }
  if (cur === null || typeof cur !== 'object' || Array.isArray(cur)) return body
  ;(cur as Record<string, unknown>)[parts[parts.length - 1] as string] = id
  return Buffer.from(JSON.stringify(doc))
}

/** The keep-alive pool to one target; every response body is read or dumped. */
export class TargetClient {
  readonly #pool: Pool

  constructor (target: TargetSettings) {
    this.#pool = new Pool(target.url.origin, {
      connections: target.connections,
      keepAliveTimeout: 30_000,
      headersTimeout: target.timeoutMs,
      bodyTimeout: target.timeoutMs,
      connectTimeout: Math.min(target.timeoutMs, 10_000)
    })
  }

  /**
   * Sends one replay; `signal` aborts it (shutdown), the pool's header and body timeouts bound it
   * (undici's own timers, not an AbortSignal.timeout and AbortSignal.any per replay, which cost
   * more than the request's framing). `readJson` keeps the JSON body of a 2xx (a create whose
   * target-assigned id must be learnt).
   */
  async send (replay: Replay, signal?: AbortSignal, readJson = false): Promise<ReplayResult> {
    let res
    try {
      res = await this.#pool.request({
        method: replay.method as 'POST',
        path: replay.path,
        headers: replay.headers,
        body: replay.body ?? undefined,
        signal
      })
    } catch (err) {
      if (signal?.aborted === true) throw err
      throw new TargetUnreachableError(errorCodeOf(err) ?? (err as Error).message, { cause: err })
    }
    let excerpt = ''
    let json: unknown
    if (res.statusCode >= 200 && res.statusCode < 300) {
      if (readJson) json = await res.body.json().catch(() => undefined)
      else await res.body.dump()
    } else {
      excerpt = await readExcerpt(res.body)
    }
    return { status: res.statusCode, headers: res.headers, excerpt, json }
  }

  async close (): Promise<void> {
    await this.#pool.close()
  }
}

async function readExcerpt (body: AsyncIterable<Buffer> & { dump: () => Promise<void> }): Promise<string> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of body) {
    chunks.push(chunk)
    size += chunk.length
    if (size >= BODY_EXCERPT_BYTES) break
  }
  await body.dump().catch(() => {})
  return Buffer.concat(chunks).subarray(0, BODY_EXCERPT_BYTES).toString('utf8')
}
