import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Logger } from '@regionsync/shared'
import type { Replicator } from './replicator.js'

export const DEFAULT_METRICS_PORT = 9464
export const DEFAULT_METRICS_HOST = '0.0.0.0'

export interface MetricsServer {
  port: number
  close: () => Promise<void>
}

/** `/metrics` (Prometheus), `/status` (JSON), `/healthz` (alive) and `/readyz` (connected and consuming). */
export async function startMetricsServer (replicator: Replicator, port: number, host: string, log: Logger): Promise<MetricsServer> {
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end()
      return
    }
    const reply = (status: number, type: string, body: string): void => {
      res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' }).end(req.method === 'HEAD' ? undefined : body)
    }
    const fail = (err: unknown): void => {
      log.warn({ err, path }, 'metrics endpoint failed')
      reply(503, 'application/json', JSON.stringify({ error: 'unavailable', message: (err as Error).message }))
    }
    switch (path) {
      case '/metrics':
        replicator.metrics.registry.metrics().then((body) => reply(200, replicator.metrics.registry.contentType, body), fail)
        return
      case '/status':
        replicator.status().then((s) => reply(200, 'application/json', JSON.stringify(s)), fail)
        return
      case '/healthz':
        reply(200, 'application/json', '{"ok":true}')
        return
      case '/readyz':
        reply(replicator.ready ? 200 : 503, 'application/json', JSON.stringify({ ready: replicator.ready }))
        return
      default:
        reply(404, 'application/json', '{"error":"not found"}')
    }
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host, () => resolve())
  })
  const bound = (server.address() as AddressInfo).port
  log.info({ port: bound, host }, 'metrics listening')
  return {
    port: bound,
    close: async () => await new Promise<void>((resolve) => {
      server.close(() => resolve())
      server.closeAllConnections()
    })
  }
}
