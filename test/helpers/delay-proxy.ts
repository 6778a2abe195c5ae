import { connect as tcpConnect, createServer, type AddressInfo, type Server, type Socket } from 'node:net'

/*
 * A TCP proxy on loopback that puts a distance between two processes: every byte is held
 * `delayMs` in each direction (a round trip costs twice that), as on a WAN link, and nothing else
 * changes. Chunks wait in a queue with their due time, one queue per direction of each connection,
 * so bytes keep flowing while earlier ones wait (a long fat link, not one that holds one message
 * at a time), connections never wait for each other, and each direction keeps its order.
 * A FIN is passed on after the delay (half-close), as is a reset. Used by the bench's WAN section
 * and the fault tests.
 */

/** Bytes a direction of one connection may hold before it stops reading from its source. */
export const DEFAULT_MAX_QUEUED_BYTES = 16 * 1024 * 1024
/**
 * A proxy closes itself after this long: one left open by a failed run must not keep a process
 * alive, or a port taken, for ever. Longer than any bench section or fault test.
 */
export const DEFAULT_MAX_LIFETIME_MS = 60 * 60 * 1000

export interface DelayProxyOptions {
  /** Where connections go. */
  target: { host: string, port: number }
  /** Delay added to each direction. */
  delayMs: number
  /** @default DEFAULT_MAX_QUEUED_BYTES */
  maxQueuedBytes?: number
  /** @default DEFAULT_MAX_LIFETIME_MS */
  maxLifetimeMs?: number
}

export interface DelayProxyStats {
  connections: number
  open: number
  /** Bytes passed on, client to target and back. */
  bytesUp: number
  bytesDown: number
  /** Most bytes one direction held at once (queued, plus written and not yet flushed). */
  peakQueuedBytes: number
}

/** Closes a socket with a reset, as a broken link does (a socket still connecting has nothing to reset). */
function drop (s: Socket): void {
  if (s.connecting || s.destroyed) s.destroy()
  else s.resetAndDestroy()
}

type Item = { due: number, chunk: Buffer } | { due: number, end: 'fin' | 'reset' }

/** One direction of one connection: what `from` sent, on its way to `to`. */
class Lane {
  readonly #items: Item[] = []
  #head = 0
  #queuedBytes = 0
  #timer: NodeJS.Timeout | null = null
  #finished = false

  constructor (
    readonly from: Socket,
    readonly to: Socket,
    readonly delayMs: number,
    readonly maxQueuedBytes: number,
    readonly onBytes: (n: number, held: number) => void
  ) {
    from.on('data', (chunk: Buffer) => this.#push({ due: performance.now() + delayMs, chunk }))
    from.once('end', () => this.#push({ due: performance.now() + delayMs, end: 'fin' }))
    to.on('drain', () => this.#checkPressure())
  }

  /** The source closed without a FIN (a reset, an error): the other side learns it after the delay. */
  reset (): void {
    this.#push({ due: performance.now() + this.delayMs, end: 'reset' })
  }

  stop (): void {
    if (this.#timer !== null) clearTimeout(this.#timer)
    this.#timer = null
    this.#finished = true
  }

  #push (item: Item): void {
    if (this.#finished) return
    this.#items.push(item)
    if ('chunk' in item) {
      this.#queuedBytes += item.chunk.length
      this.#checkPressure()
    }
    if (this.#timer === null) this.#schedule()
  }

  #schedule (): void {
    const next = this.#items[this.#head]
    if (next === undefined) return
    this.#timer = setTimeout(() => { this.#timer = null; this.#flush() }, Math.max(0, next.due - performance.now()))
  }

  /** Passes on everything due, in order; the delay is the same for every item, so the queue is FIFO. */
  #flush (): void {
    const now = performance.now()
    while (this.#head < this.#items.length) {
      const item = this.#items[this.#head] as Item
      if (item.due > now) break
      this.#head++
      if ('chunk' in item) {
        this.#queuedBytes -= item.chunk.length
        if (!this.to.destroyed) this.to.write(item.chunk)
        this.onBytes(item.chunk.length, 0)
      } else {
        this.#finished = true
        if (item.end === 'fin') this.to.end()
        else drop(this.to)
        break
      }
    }
    if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
      this.#items.splice(0, this.#head)
      this.#head = 0
    }
    this.#checkPressure()
    if (!this.#finished) this.#schedule()
  }

  /** Reads from the source only while what this direction holds is under the bound. */
  #checkPressure (): void {
    const held = this.#queuedBytes + this.to.writableLength
    this.onBytes(0, held)
    if (held > this.maxQueuedBytes) {
      if (!this.from.isPaused()) this.from.pause()
    } else if (this.from.isPaused() && !this.from.destroyed) {
      this.from.resume()
    }
  }
}

export class DelayProxy {
  readonly port: number
  readonly delayMs: number
  readonly stats: DelayProxyStats = { connections: 0, open: 0, bytesUp: 0, bytesDown: 0, peakQueuedBytes: 0 }
  readonly #server: Server
  readonly #sockets = new Set<Socket>()
  readonly #lanes = new Set<Lane>()
  readonly #lifetime: NodeJS.Timeout
  #closing: Promise<void> | null = null

  private constructor (server: Server, o: Required<DelayProxyOptions>) {
    this.#server = server
    this.port = (server.address() as AddressInfo).port
    this.delayMs = o.delayMs
    this.#lifetime = setTimeout(() => { this.close().catch(() => {}) }, o.maxLifetimeMs)
    this.#lifetime.unref()
    server.on('connection', (client: Socket) => this.#accept(client, o))
  }

  static async start (options: DelayProxyOptions): Promise<DelayProxy> {
    const o: Required<DelayProxyOptions> = { maxQueuedBytes: DEFAULT_MAX_QUEUED_BYTES, maxLifetimeMs: DEFAULT_MAX_LIFETIME_MS, ...options }
    if (!Number.isFinite(o.delayMs) || o.delayMs < 0) throw new RangeError(`delayMs: expects a number of milliseconds, at least 0 (got ${o.delayMs})`)
    if (!Number.isInteger(o.maxQueuedBytes) || o.maxQueuedBytes < 1) throw new RangeError('maxQueuedBytes: expects a whole number of bytes, at least 1')
    const server = createServer({ allowHalfOpen: true, noDelay: true })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(0, '127.0.0.1', () => { server.off('error', reject); resolve() })
    })
    return new DelayProxy(server, o)
  }

  /** The proxy's address, `host:port`. */
  get address (): string {
    return `127.0.0.1:${this.port}`
  }

  #accept (client: Socket, o: Required<DelayProxyOptions>): void {
    if (this.#closing !== null) { client.destroy(); return }
    const upstream = tcpConnect({ host: o.target.host, port: o.target.port, allowHalfOpen: true, noDelay: true })
    this.stats.connections++
    this.stats.open++
    const peak = (held: number): void => { if (held > this.stats.peakQueuedBytes) this.stats.peakQueuedBytes = held }
    const up = new Lane(client, upstream, o.delayMs, o.maxQueuedBytes, (n, held) => { this.stats.bytesUp += n; peak(held) })
    const down = new Lane(upstream, client, o.delayMs, o.maxQueuedBytes, (n, held) => { this.stats.bytesDown += n; peak(held) })
    this.#lanes.add(up).add(down)
    let closed = 0
    const onClose = (source: Socket, lane: Lane) => (hadError: boolean): void => {
      this.#sockets.delete(source)
      // A socket that closed before its FIN went through (reset, error) takes the connection with it.
      if (hadError || !source.readableEnded) lane.reset()
      if (++closed === 2) {
        up.stop()
        down.stop()
        this.#lanes.delete(up)
        this.#lanes.delete(down)
        this.stats.open--
      }
    }
    for (const [s, lane] of [[client, up], [upstream, down]] as const) {
      this.#sockets.add(s)
      s.on('error', () => {})
      s.once('close', onClose(s, lane))
    }
  }

  /** Stops listening and drops every connection; the same promise on every call. */
  async close (): Promise<void> {
    this.#closing ??= (async () => {
      clearTimeout(this.#lifetime)
      const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()))
      for (const l of this.#lanes) l.stop()
      for (const s of this.#sockets) drop(s)
      await closed
    })()
    await this.#closing
  }
}
