import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Logger } from '@regionsync/shared'
import type { RegionStatus } from './cluster-status.js'
import { DASHBOARD_CSP, DASHBOARD_HTML } from './dashboard.js'
import type { Replicator } from './replicator.js'

export const DEFAULT_METRICS_PORT = 9464
export const DEFAULT_METRICS_HOST = '0.0.0.0'

export interface MetricsServer {
  port: number
  close: () => Promise<void>
}

/** Headers of the dashboard page: its own CSP, and no sniffing, framing or referrer. */
const PAGE_HEADERS = {
  'content-security-policy': DASHBOARD_CSP,
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer'
}

/**
 * `/` (the dashboard page), `/regions` (every region's status, JSON), `/metrics` (Prometheus),
 * `/status` (this instance, JSON), `/healthz` (alive) and `/readyz` (connected and consuming).
 */
export async function startMetricsServer (replicator: Replicator, port: number, host: string, log: Logger): Promise<MetricsServer> {
  // Each /regions is a scatter-gather over NATS that waits out its deadline; viewers polling at
  // once share the one in flight instead of each starting another.
  let gathering: Promise<RegionStatus[]> | null = null
  const regions = (): Promise<RegionStatus[]> => {
    gathering ??= replicator.clusterStatus().finally(() => { gathering = null })
    return gathering
  }
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end()
      return
    }
    const reply = (status: number, type: string, body: string, headers: Record<string, string> = {}): void => {
      res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', ...headers }).end(req.method === 'HEAD' ? undefined : body)
    }
    const fail = (err: unknown): void => {
      log.warn({ err, path }, 'metrics endpoint failed')
      reply(503, 'application/json', JSON.stringify({ error: 'unavailable', message: (err as Error).message }))
    }
    switch (path) {
      case '/':
        reply(200, 'text/html; charset=utf-8', DASHBOARD_HTML, PAGE_HEADERS)
        return
      case '/regions':
        regions().then((r) => reply(200, 'application/json', JSON.stringify(r)), fail)
        return
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
