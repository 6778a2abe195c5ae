import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Logger, VerifySummary } from '@regionsync/shared'
import { Counter, Gauge, Registry } from 'prom-client'
import type { VerifyReport } from './verifier.js'

/** Beside the replicator's 9464, so both can run on one host. */
export const DEFAULT_VERIFY_METRICS_PORT = 9465

export interface VerifyMetrics {
  registry: Registry
  /** Sets the gauges from one finished run; the last full check only when it covered every type. */
  record: (report: VerifyReport, full?: boolean) => void
  /** Counts a run that could not finish (a region unreadable). */
  failed: () => void
}

export function createVerifyMetrics (registry = new Registry()): VerifyMetrics {
  const registers = [registry]
  const divergent = new Gauge({
    name: 'regionsync_divergent_resources',
    help: 'Resources that differ from the source region (missing, extra or different) at the last full check, per region and type',
    labelNames: ['region', 'type'],
    registers
  })
  const lastCheck = new Gauge({
    name: 'regionsync_verify_last_full_check_timestamp_seconds',
    help: 'Unix time at which the last full verify finished (the verifier\'s start until one has)',
    registers
  })
  // Not 0 before the first run ends: a first run over millions of resources is not a stale check.
  lastCheck.set(Date.now() / 1000)
  const runs = new Counter({ name: 'regionsync_verify_runs_total', help: 'Verify runs, by result (clean, divergent, failed)', labelNames: ['result'], registers })
  for (const result of ['clean', 'divergent', 'failed']) runs.inc({ result }, 0)
  return {
    registry,
    record (report, full = true) {
      for (const [region, byType] of divergentByRegion(report)) {
        for (const [type, n] of Object.entries(byType)) divergent.set({ region, type }, n)
      }
      if (full) lastCheck.set(Date.parse(report.finishedAt) / 1000)
      runs.inc({ result: report.clean ? 'clean' : 'divergent' })
    },
    failed () { runs.inc({ result: 'failed' }) }
  }
}

/** Divergent resources per region and type: reported differences plus those past the listing limit. */
export function divergentByRegion (report: VerifyReport): Map<string, Record<string, number>> {
  const out = new Map<string, Record<string, number>>()
  for (const t of report.types) {
    for (const r of t.regions) {
      const byType = out.get(r.region) ?? {}
      byType[t.type] = r.missing + r.extra + r.different + r.beyondLimit
      out.set(r.region, byType)
    }
  }
  return out
}

export function summariesOf (report: VerifyReport): VerifySummary[] {
  return [...divergentByRegion(report)].map(([region, byType]) => ({
    region,
    byType,
    divergent: Object.values(byType).reduce((a, b) => a + b, 0),
    checkedAt: report.finishedAt
  }))
}

/** `/metrics` and `/healthz` of `regionsync verify --every`. */
export async function startVerifyMetricsServer (registry: Registry, port: number, host: string, log: Logger): Promise<{ port: number, close: () => Promise<void> }> {
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]
    if (path === '/healthz') {
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}')
      return
    }
    if (path !== '/metrics') {
      res.writeHead(404).end()
      return
    }
    registry.metrics().then((body) => {
      res.writeHead(200, { 'content-type': registry.contentType }).end(body)
    }, (err: unknown) => {
      log.warn({ err }, 'verify metrics failed')
      res.writeHead(503).end()
    })
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host, () => resolve())
  })
  const bound = (server.address() as AddressInfo).port
  log.info({ port: bound }, 'verify metrics listening')
  return {
    port: bound,
    close: async () => await new Promise<void>((resolve) => { server.close(() => resolve()); server.closeAllConnections() })
  }
}
