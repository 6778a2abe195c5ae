import { createInbox, headers as natsHeaders, type Msg, type NatsConnection, type Subscription } from '@nats-io/transport-node'
import { ErrorCode, RegionsyncError } from './errors.js'

/** How often pending acknowledgements are checked against their deadline. */
const SWEEP_MS = 50

export interface PubAck {
  stream: string
  seq: number
  duplicate: boolean
}

interface Pending {
  resolve: (ack: PubAck) => void
  reject: (err: Error) => void
  deadline: number
}

/**
 * Publishes to JetStream and resolves with its acknowledgement, like `js.publish`, without a
 * request per message: one wildcard inbox subscription receives every ack and one timer sweeps the
 * deadlines. On the plugin's hot path this replaces a timer, an inbox entry and two pre-built
 * errors per write, which profiling showed to be a third of an API's CPU per request.
 */
export class AckedPublisher {
  readonly #nc: NatsConnection
  readonly #prefix: string
  readonly #sub: Subscription
  readonly #pending = new Map<string, Pending>()
  readonly #sweep: NodeJS.Timeout
  #next = 0

  constructor (nc: NatsConnection) {
    this.#nc = nc
    this.#prefix = `${createInbox()}.`
    this.#sub = nc.subscribe(`${this.#prefix}*`, { callback: (err, msg) => { if (err === null) this.#settle(msg) } })
    this.#sweep = setInterval(() => this.#expire(), SWEEP_MS)
    this.#sweep.unref()
  }

  async publish (subject: string, data: Uint8Array, opts: { msgId: string, timeoutMs: number, headers?: Record<string, string> }): Promise<PubAck> {
    const token = (this.#next++).toString(36)
    const h = natsHeaders()
    h.set('Nats-Msg-Id', opts.msgId)
    for (const [k, v] of Object.entries(opts.headers ?? {})) h.set(k, v)
    return await new Promise<PubAck>((resolve, reject) => {
      this.#pending.set(token, { resolve, reject, deadline: Date.now() + opts.timeoutMs })
      try {
        this.#nc.publish(subject, data, { reply: this.#prefix + token, headers: h })
      } catch (err) {
        this.#pending.delete(token)
        reject(err as Error)
      }
    })
  }

  #settle (msg: Msg): void {
    const token = msg.subject.slice(this.#prefix.length)
    const p = this.#pending.get(token)
    if (p === undefined) return
    this.#pending.delete(token)
    if (msg.headers?.code === 503 || msg.data.length === 0) {
      p.reject(new RegionsyncError(ErrorCode.Publish, 'no JetStream stream answered for this subject'))
      return
    }
    try {
      const ack = msg.json<Partial<PubAck> & { error?: { code?: number, description?: string } }>()
      if (ack.error !== undefined) p.reject(new RegionsyncError(ErrorCode.Publish, `JetStream refused the event: ${ack.error.description ?? 'unknown error'} (${ack.error.code ?? '?'})`))
      else p.resolve({ stream: ack.stream ?? '', seq: ack.seq ?? 0, duplicate: ack.duplicate === true })
    } catch (err) {
      p.reject(new RegionsyncError(ErrorCode.Publish, 'JetStream answered with something that is not an acknowledgement', { cause: err }))
    }
  }

  /** Deadlines are in insertion order (one timeout per publisher), so the sweep stops at the first live one. */
  #expire (): void {
    const now = Date.now()
    for (const [token, p] of this.#pending) {
      if (p.deadline > now) return
      this.#pending.delete(token)
      p.reject(new RegionsyncError(ErrorCode.Publish, 'JetStream did not acknowledge the event in time'))
    }
  }

  close (): void {
    clearInterval(this.#sweep)
    this.#sub.unsubscribe()
    for (const p of this.#pending.values()) p.reject(new RegionsyncError(ErrorCode.Closed, 'publisher closed'))
    this.#pending.clear()
  }
}
