import { createInbox, type Msg, type MsgHdrs, type NatsConnection, type Subscription } from '@nats-io/transport-node'
import { parseAckSubject, type WriteCoalescer } from '@regionsync/shared'

/** One message a pull delivered, with what the consumer said of it. */
export interface Delivery {
  seq: number
  /** 1 on a first delivery; more on a redelivery. */
  deliveryCount: number
  /** The consumer's number for this delivery: one more than the last, unless one was lost on the way. */
  consumerSeq: number
  subject: string
  data: Uint8Array
  headers: MsgHdrs | undefined
  handle: AckHandle
}

/**
 * Answers the server for one delivered message: writes to its `$JS.ACK` reply subject, with the
 * connection's other writes of the turn.
 */
export class AckHandle {
  readonly #nc: NatsConnection
  readonly #writes: WriteCoalescer
  readonly #reply: string

  constructor (nc: NatsConnection, writes: WriteCoalescer, reply: string) {
    this.#nc = nc
    this.#writes = writes
    this.#reply = reply
  }

  ack (): void { this.#send('+ACK') }
  /** Redeliver after `delayMs` (nats-server 2.9 honours a delay given here, not the consumer's backoff). */
  nak (delayMs = 0): void { this.#send(delayMs > 0 ? `-NAK ${JSON.stringify({ delay: delayMs * 1_000_000 })}` : '-NAK') }
  /** Still working on it: the server restarts the ack wait. */
  working (): void { this.#send('+WPI') }
  /** Never redeliver (2.9 does not understand a reason after it). */
  term (): void { this.#send('+TERM') }

  #send (body: string): void {
    this.#writes.defer(() => {
      // A write lost with the connection is answered by a redelivery.
      try { this.#nc.publish(this.#reply, body) } catch { /* the connection is closed */ }
    })
  }
}

export interface PullRequest {
  batch: number
  /** How long the server keeps the pull waiting for messages; omit with `noWait`. */
  expiresMs?: number
  /** Answer with what is there now and end (a 404 status) instead of waiting. */
  noWait?: boolean
}

interface Outstanding {
  remaining: number
  /** When this side stops counting on the pull if the server never says it ended (it died). */
  deadline: number
}

/** Grace after a pull's expiry before it is taken for lost with its server. */
const LOST_PULL_GRACE_MS = 2000

/**
 * Pull requests to one consumer, each on its own reply subject under one inbox subscription, so
 * the caller decides how many messages may be out at once and how long each pull may live (an
 * owner never lets a pull outlive its lease). Status answers (408 expired, 404 none, 409) end a
 * pull; messages are handed to `onDelivery`; `onEnded` is told when a pull is over.
 */
export class PullStream {
  readonly #nc: NatsConnection
  readonly #writes: WriteCoalescer
  readonly #subject: string
  readonly #prefix = `${createInbox()}.`
  readonly #sub: Subscription
  readonly #pulls = new Map<string, Outstanding>()
  readonly #onDelivery: (d: Delivery) => void
  readonly #onEnded: (status: number | null) => void
  #next = 0
  #stopped = false
  /** Date.now() by which every pull issued so far has expired on the server. */
  #allExpireAt = 0

  constructor (nc: NatsConnection, writes: WriteCoalescer, stream: string, consumer: string, handlers: { onDelivery: (d: Delivery) => void, onEnded: (status: number | null) => void }) {
    this.#nc = nc
    this.#writes = writes
    this.#subject = `$JS.API.CONSUMER.MSG.NEXT.${stream}.${consumer}`
    this.#onDelivery = handlers.onDelivery
    this.#onEnded = handlers.onEnded
    this.#sub = nc.subscribe(`${this.#prefix}*`, { callback: (err, msg) => { if (err === null) this.#receive(msg) } })
  }

  /** Message slots asked for and not yet delivered, over every live pull. */
  get requested (): number {
    this.#expireLost()
    let n = 0
    for (const p of this.#pulls.values()) n += p.remaining
    return n
  }

  /** Pulls that have not ended yet, as far as this side can tell. */
  get live (): number {
    this.#expireLost()
    return this.#pulls.size
  }

  /**
   * When no pull issued so far can still be served. The server fills its waiting pulls in turns,
   * so which pull a message counted against is a guess; this bound is not.
   */
  get allExpireAt (): number {
    return this.#allExpireAt
  }

  pull (r: PullRequest): void {
    if (this.#stopped || r.batch < 1) return
    const token = (this.#next++).toString(36)
    const expiresMs = r.noWait === true ? 0 : Math.max(1, Math.floor(r.expiresMs ?? 1000))
    this.#pulls.set(token, { remaining: r.batch, deadline: Date.now() + expiresMs + LOST_PULL_GRACE_MS })
    this.#allExpireAt = Math.max(this.#allExpireAt, Date.now() + expiresMs)
    const body = JSON.stringify(r.noWait === true ? { batch: r.batch, no_wait: true } : { batch: r.batch, expires: expiresMs * 1_000_000 })
    this.#writes.defer(() => {
      try {
        this.#nc.publish(this.#subject, body, { reply: this.#prefix + token })
      } catch {
        this.#end(token, null)
      }
    })
  }

  #receive (msg: Msg): void {
    const code = msg.headers?.code ?? 0
    if (code !== 0 && msg.data.length === 0) {
      // Statuses come on the pull's own reply subject. 100 is an idle heartbeat; any other ends it.
      if (code !== 100) this.#end(msg.subject.slice(this.#prefix.length), code)
      return
    }
    const info = msg.reply === undefined ? null : parseAckSubject(msg.reply)
    if (info === null || msg.reply === undefined) return
    // A message comes under its stream subject, not the pull's: the server fills pulls in the
    // order they arrived, so it counts against the oldest.
    let filled: string | null = null
    for (const [token, p] of this.#pulls) {
      if (--p.remaining <= 0) filled = token
      break
    }
    if (this.#stopped) {
      // Arrived after stop: hand it straight back.
      new AckHandle(this.#nc, this.#writes, msg.reply).nak()
    } else {
      this.#onDelivery({ seq: info.seq, deliveryCount: info.deliveryCount, consumerSeq: info.consumerSeq, subject: msg.subject, data: msg.data, headers: msg.headers, handle: new AckHandle(this.#nc, this.#writes, msg.reply) })
    }
    // Only now: whoever is told the pull ended counts this message as held, not as still to come.
    if (filled !== null) this.#end(filled, null)
  }

  #end (token: string, status: number | null): void {
    if (this.#pulls.delete(token)) this.#onEnded(status)
  }

  #expireLost (): void {
    const now = Date.now()
    for (const [token, p] of this.#pulls) if (p.deadline < now) this.#end(token, null)
  }

  /** Issues no more pulls; messages that still arrive are handed back (nak). */
  stop (): void {
    this.#stopped = true
  }

  close (): void {
    this.#stopped = true
    this.#sub.unsubscribe()
    this.#pulls.clear()
  }
}
