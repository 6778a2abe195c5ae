import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import { Pool } from 'undici'

/**
 * How the proxy treats requests:
 * - `pass`: forwards each request and its answer;
 * - `hang`: never answers; every other request is still forwarded and applied (its answer is lost,
 *   as when a target commits and then stalls), the others are not (a target that stalls before);
 * - `slow`: forwards, then holds each answer `slowMs` before sending it.
 */
export type ProxyMode = 'pass' | 'hang' | 'slow'

/** Request headers a proxy must not pass on (hop by hop, or its own framing). */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'proxy-connection', 'host', 'content-length'])

/**
 * A region's address as its replicators see it: an HTTP proxy on loopback in front of the region's
 * real API, which a test can take down (connection refused, same port when it comes back), make
 * hang past the replicators' timeout, or slow down. The API behind it keeps its data throughout.
 */
export class FaultProxy {
  mode: ProxyMode = 'pass'
  slowMs = 200
  /** Requests that got no answer because of `hang`, and how many of those were applied behind it. */
  readonly counts = { forwarded: 0, hung: 0, hungApplied: 0, slowed: 0 }
  readonly port: number
  readonly #server: Server
  readonly #upstream: Pool
  readonly #sockets = new Set<Socket>()
  #listening = false

  private constructor (server: Server, upstream: string, port: number) {
    this.#server = server
    this.port = port
    this.#upstream = new Pool(upstream, { connections: 32, keepAliveTimeout: 10_000 })
    server.on('connection', (s: Socket) => {
      this.#sockets.add(s)
      s.once('close', () => this.#sockets.delete(s))
    })
    server.on('request', (req: IncomingMessage, res: ServerResponse) => { this.#handle(req, res).catch(() => res.destroy()) })
  }

  static async start (upstream: string): Promise<FaultProxy> {
    const server = createServer({ keepAliveTimeout: 30_000 })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(0, '127.0.0.1', () => { server.off('error', reject); resolve() })
    })
    const proxy = new FaultProxy(server, upstream, (server.address() as { port: number }).port)
    proxy.#listening = true
    return proxy
  }

  get url (): string {
    return `http://127.0.0.1:${this.port}`
  }

  /** Stops listening and drops every connection: the port refuses connections until `up()`. */
  async down (): Promise<void> {
    if (!this.#listening) return
    this.#listening = false
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()))
    for (const s of this.#sockets) s.destroy()
    await closed
  }

  /** Listens again on the same port. */
  async up (): Promise<void> {
    if (this.#listening) return
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject)
      this.#server.listen(this.port, '127.0.0.1', () => { this.#server.off('error', reject); resolve() })
    })
    this.#listening = true
  }

  async #handle (req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = []
    for await (const c of req) chunks.push(c as Buffer)
    const body = Buffer.concat(chunks)
    const mode = this.mode
    if (mode === 'hang') {
      // Held open until the client gives up; the answer never comes.
      this.counts.hung++
      if (this.counts.hung % 2 === 1) return
      this.counts.hungApplied++
    }
    const headers: Record<string, string> = {}
    for (const [k, v] of Object.entries(req.headers)) {
      if (!HOP_BY_HOP.has(k) && typeof v === 'string') headers[k] = v
    }
    const answer = await this.#upstream.request({
      method: (req.method ?? 'GET') as 'POST',
      path: req.url ?? '/',
      headers,
      body: body.length === 0 ? undefined : body
    })
    const out = Buffer.from(await answer.body.arrayBuffer())
    this.counts.forwarded++
    if (mode === 'hang') return
    if (mode === 'slow') {
      this.counts.slowed++
      await new Promise((resolve) => setTimeout(resolve, this.slowMs))
    }
    const outHeaders: Record<string, string | string[]> = {}
    for (const [k, v] of Object.entries(answer.headers)) {
      if (!HOP_BY_HOP.has(k) && v !== undefined) outHeaders[k] = v
    }
    if (res.destroyed) return
    res.writeHead(answer.statusCode, outHeaders).end(out)
  }

  async close (): Promise<void> {
    await this.down()
    await this.#upstream.close()
  }
}
