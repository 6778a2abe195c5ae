import { createServer, type IncomingHttpHeaders, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'

/** One request as the target received it. */
export interface ReceivedRequest {
  method: string
  /** Path and query exactly as sent. */
  path: string
  headers: IncomingHttpHeaders
  body: Buffer
  /** When the request arrived (ms since epoch). */
  receivedAt: number
  /** When the answer was fully written; undefined while it is still pending. */
  answeredAt?: number
}

export interface ScriptedReply {
  /** @default 200 */
  status?: number
  headers?: Record<string, string>
  body?: string
  /** Wait this long before answering. */
  delayMs?: number
}

/** Decides the answer to a request; `index` counts requests from 0 in arrival order. */
export type Script = (req: ReceivedRequest, index: number) => ScriptedReply

/**
 * A real HTTP server standing in for a region's API: it records every request (method, path,
 * headers, body) and answers as the test scripts it.
 */
export class TestTarget {
  readonly requests: ReceivedRequest[] = []
  script: Script
  readonly #server: Server

  private constructor (server: Server, script: Script) {
    this.#server = server
    this.script = script
  }

  static async start (opts: { port?: number, script?: Script } = {}): Promise<TestTarget> {
    const server = createServer()
    const target = new TestTarget(server, opts.script ?? (() => ({ status: 200 })))
    server.on('request', (req, res) => {
      const received: ReceivedRequest = {
        method: req.method ?? '',
        path: req.url ?? '',
        headers: req.headers,
        body: Buffer.alloc(0),
        receivedAt: Date.now()
      }
      const chunks: Buffer[] = []
      req.on('data', (c: Buffer) => chunks.push(c))
      req.on('end', () => {
        received.body = Buffer.concat(chunks)
        const index = target.requests.push(received) - 1
        const reply = target.script(received, index)
        const answer = (): void => {
          res.on('finish', () => { received.answeredAt = Date.now() })
          res.writeHead(reply.status ?? 200, { 'content-type': 'application/json', ...reply.headers }).end(reply.body ?? '{}')
        }
        if (reply.delayMs === undefined || reply.delayMs <= 0) answer()
        else setTimeout(answer, reply.delayMs)
      })
    })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(opts.port ?? 0, '127.0.0.1', () => resolve())
    })
    return target
  }

  get port (): number {
    return (this.#server.address() as AddressInfo).port
  }

  get url (): string {
    return `http://127.0.0.1:${this.port}`
  }

  /** Requests that carried this Idempotency-Key (event id). */
  withKey (eventId: string): ReceivedRequest[] {
    return this.requests.filter((r) => r.headers['idempotency-key'] === eventId)
  }

  async close (): Promise<void> {
    await new Promise<void>((resolve) => {
      this.#server.close(() => resolve())
      this.#server.closeAllConnections()
    })
  }
}
