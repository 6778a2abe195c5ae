import { createInbox, headers as natsHeaders, type Msg, type MsgHdrs, type NatsConnection, type Subscription } from '@nats-io/transport-node'
import { ErrorCode, RegionsyncError } from './errors.js'
import { coalescerOf, type WriteCoalescer } from './write-coalescer.js'

/** How often pending answers are checked against their deadline. */
const SWEEP_MS = 50

export interface PubAck {
  stream: string
  seq: number
  duplicate: boolean
}

interface Pending {
  resolve: (msg: Msg) => void
  reject: (err: Error) => void
  deadline: number
}

/**
 * Requests over one wildcard inbox subscription with one timer sweeping the deadlines, instead of
 * nats.js's request per message (a timer, an inbox entry and two pre-built errors with stack traces
 * each), which profiling showed to be a third of an API's CPU per write. Used for JetStream
 * publishes with their acknowledgement and for KV gets and puts, on the plugin's and the
 * replicator's hot paths. Requests go out through the connection's WriteCoalescer.
 */
export class InboxClient {
  readonly #nc: NatsConnection
  readonly #writes: WriteCoalescer
  readonly #prefix: string
  readonly #sub: Subscription
  readonly #pending = new Map<string, Pending>()
  readonly #sweep: NodeJS.Timeout
  #next = 0

  constructor (nc: NatsConnection) {
    this.#nc = nc
    this.#writes = coalescerOf(nc)
    this.#prefix = `${createInbox()}.`
    this.#sub = nc.subscribe(`${this.#prefix}*`, { callback: (err, msg) => { if (err === null) this.#settle(msg) } })
    this.#sweep = setInterval(() => this.#expire(), SWEEP_MS)
    this.#sweep.unref()
  }

  /** Sends `data` with a reply subject; resolves with the answer, whatever its status. */
  async request (subject: string, data: Uint8Array, timeoutMs: number, headers?: Record<string, string>): Promise<Msg> {
    const token = (this.#next++).toString(36)
    let h: MsgHdrs | undefined
    if (headers !== undefined) {
      h = natsHeaders()
      for (const [k, v] of Object.entries(headers)) h.set(k, v)
    }
    return await new Promise<Msg>((resolve, reject) => {
      this.#pending.set(token, { resolve, reject, deadline: Date.now() + timeoutMs })
      this.#writes.defer(() => {
        // Closed, timed out or answered meanwhile: nothing left to send for.
        if (!this.#pending.has(token)) return
        try {
          this.#nc.publish(subject, data, { reply: this.#prefix + token, ...(h !== undefined ? { headers: h } : {}) })
        } catch (err) {
          this.#pending.delete(token)
          reject(err as Error)
        }
      })
    })
  }

  /** Publishes to a stream and resolves with JetStream's acknowledgement, like `js.publish`. */
  async publish (subject: string, data: Uint8Array, opts: { msgId?: string, timeoutMs: number, headers?: Record<string, string> }): Promise<PubAck> {
    let headers = opts.headers
    if (opts.msgId !== undefined) {
      // Not `{ ...opts.headers, 'Nats-Msg-Id': ... }`: V8 builds that in slow mode (microseconds).
      headers = Object.assign({}, opts.headers)
      headers['Nats-Msg-Id'] = opts.msgId
    }
    return parsePubAck(await this.request(subject, data, opts.timeoutMs, headers))
  }

  #settle (msg: Msg): void {
    const token = msg.subject.slice(this.#prefix.length)
    const p = this.#pending.get(token)
    if (p === undefined) return
    this.#pending.delete(token)
    p.resolve(msg)
  }

  /** Deadlines are in insertion order only per timeout, so the sweep looks at every pending one. */
  #expire (): void {
    const now = Date.now()
    for (const [token, p] of this.#pending) {
      if (p.deadline > now) continue
      this.#pending.delete(token)
      p.reject(new RegionsyncError(ErrorCode.Publish, 'no answer from NATS in time'))
    }
  }

  close (): void {
    clearInterval(this.#sweep)
    this.#sub.unsubscribe()
    for (const p of this.#pending.values()) p.reject(new RegionsyncError(ErrorCode.Closed, 'closed'))
    this.#pending.clear()
  }
}

function parsePubAck (msg: Msg): PubAck {
  if (msg.headers?.code === 503 || msg.data.length === 0) {
    throw new RegionsyncError(ErrorCode.Publish, 'no JetStream stream answered for this subject')
  }
  let ack: Partial<PubAck> & { error?: { code?: number, description?: string } }
  try {
    ack = msg.json()
  } catch (err) {
    throw new RegionsyncError(ErrorCode.Publish, 'JetStream answered with something that is not an acknowledgement', { cause: err })
  }
  if (ack.error !== undefined) throw new RegionsyncError(ErrorCode.Publish, `JetStream refused the message: ${ack.error.description ?? 'unknown error'} (${ack.error.code ?? '?'})`)
  return { stream: ack.stream ?? '', seq: ack.seq ?? 0, duplicate: ack.duplicate === true }
}
