import { rm } from 'node:fs/promises'
import type { NatsConnection } from '@nats-io/transport-node'
import { buildIdentityApi } from '@regionsync/examples'
import { connectNats } from '@regionsync/shared'
import { childConfig, fail, serveParent, toParent } from './children.js'

/**
 * The example identity API as the source region's process: with the regionsync plugin (over its
 * own NATS connection, so it can tell the parent when NATS is gone) or without it.
 */
export interface ApiChildConfig {
  region: string
  plugin: false | { natsUrl: string, namespace: string, signingKey: string, spoolDir: string, spoolMaxEvents: number }
}

interface MetricJson { name: string, values: Array<{ metricName?: string, value: number, labels: Record<string, string | number> }> }

/** The publisher's JetStream ack-time histogram: [upper bound in seconds, cumulative count]. */
async function ackBuckets (registry: { getMetricsAsJSON: () => Promise<unknown> }): Promise<Array<[number, number]>> {
  const metrics = await registry.getMetricsAsJSON() as MetricJson[]
  const ack = metrics.find((m) => m.name === 'regionsync_publish_ack_seconds')
  return (ack?.values ?? [])
    .filter((v) => v.metricName === 'regionsync_publish_ack_seconds_bucket')
    .map((v) => [v.labels.le === '+Inf' ? Number.POSITIVE_INFINITY : Number(v.labels.le), v.value])
}

async function main (): Promise<void> {
  const c = childConfig<ApiChildConfig>()
  let nc: NatsConnection | null = null
  let connected = true
  if (c.plugin !== false) {
    nc = await connectNats({ servers: c.plugin.natsUrl, name: 'bench-source-api' })
    const status = nc.status()
    ;(async () => {
      for await (const s of status) {
        if (s.type === 'disconnect') { connected = false; toParent({ type: 'nats-disconnected' }) }
        if (s.type === 'reconnect') connected = true
      }
    })().catch(() => {})
  }
  const app = await buildIdentityApi({
    region: c.region,
    regionsync: c.plugin === false || nc === null
      ? false
      : {
          region: c.region,
          connection: nc,
          signingKey: c.plugin.signingKey,
          namespace: c.plugin.namespace,
          spool: { dir: c.plugin.spoolDir, maxEvents: c.plugin.spoolMaxEvents }
        }
  })
  const url = await app.listen({ port: 0, host: '127.0.0.1' })
  serveParent({
    stats: async () => {
      toParent({ type: 'stats', spooled: c.plugin === false ? 0 : app.regionsync.spooled, connected, ackBuckets: c.plugin === false ? [] : await ackBuckets(app.regionsync.registry) })
    }
  }, async () => {
    await app.close()
    // The plugin does not close a connection it was given; a dead server must not hold the exit.
    if (nc !== null && !nc.isClosed()) await nc.close()
    if (c.plugin !== false) await rm(c.plugin.spoolDir, { recursive: true, force: true })
  })
  toParent({ type: 'ready', url })
}

main().catch(fail)
