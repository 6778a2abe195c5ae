import { randomBytes } from 'node:crypto'
import { DEFAULT_PARTITIONS } from '@regionsync/shared'
import { sectionBacklog, type Backlog } from './backlog.js'
import type { Child, Message } from './children.js'
import { CpuMeter, natsServerPid } from './cpu.js'
import { startClient, startTarget, stopAll, targetRate, waitForTarget, withNats, type BenchContext } from './context.js'
import type { ReplicatorChildConfig } from './replicator-child.js'
import { MB, round, sleep } from './util.js'

/** In flight at once: the replicator's ceiling (one per partition), given to the raw client and the baseline too. */
export const REPLICATION_CONCURRENCY = DEFAULT_PARTITIONS

export type ReplicationMode = 'raw' | 'replicator' | 'baseline'

export interface ReplicationRun {
  mode: ReplicationMode
  /** The target ran the regionsync plugin (signature check and replay guard), as a real region does. */
  targetPlugin: boolean
  /** The region the run applied to: each run with the plugin has its own (its own replay records). */
  region: string
  events: number
  seconds: number
  eventsPerSec: number
  non2xx: number
  /** Peak RSS of the client process (sampled in it every 50 ms). */
  peakRssMB: number
  /** CPU each process used per event applied, in microseconds; `others` is the rest of the machine in cores. */
  cpuUsPerEvent: { client: number | null, target: number | null, nats: number | null }
  otherCores: number | null
}

export interface ReplicationResult {
  conditions: {
    backlog: Backlog
    target: string
    concurrency: number
    partitions: number
    measuredAt: string
  }
  runs: ReplicationRun[]
  vsRaw: number
  vsBaseline: number
  /** Replicator / raw undici, both to the target with the plugin. */
  vsRawWithPlugin: number
}

/**
 * The runs, in order. Raw and the replicator go to the target without the plugin and with it; the
 * baseline sends plain requests, which a target's plugin would take for new writes and publish,
 * so it runs without. A region's consumers and the target plugin's replay records are its own, so
 * each run that must start from nothing has its own region.
 */
const RUNS: Array<{ mode: ReplicationMode, targetPlugin: boolean, region: string }> = [
  { mode: 'raw', targetPlugin: false, region: 'eu' },
  { mode: 'replicator', targetPlugin: false, region: 'eu' },
  { mode: 'baseline', targetPlugin: false, region: 'eu' },
  { mode: 'raw', targetPlugin: true, region: 'ap' },
  { mode: 'replicator', targetPlugin: true, region: 'sa' }
]

function perEvent (ms: number | null | undefined, events: number): number | null {
  return ms === null || ms === undefined || events === 0 ? null : round((ms * 1000) / events, 0)
}

/**
 * 2. Replication throughput: one backlog, applied five times, each time to a fresh copy of the
 * example API in its own process: raw undici requests (the physical limit), the replicator, and
 * the hand-written baseline, to the API without the plugin; then raw and the replicator again to
 * the API with the plugin, as a real region runs it (each replay's signature checked, its
 * Idempotency-Key recorded in JetStream KV).
 */
export async function runReplication (ctx: BenchContext): Promise<ReplicationResult> {
  const events = ctx.quick ? 2_000 : 50_000
  const timeoutMs = ctx.quick ? 60_000 : 240_000
  const runs: ReplicationRun[] = []
  let backlog: Backlog | undefined
  await withNats(ctx, async (nats) => {
    const { namespace, backlog: published } = await sectionBacklog(ctx, nats.url, { step: '2/6 replication', namespacePrefix: 'repl', count: events })
    backlog = published
    for (const { mode, targetPlugin, region } of RUNS) {
      const label = `${mode}${targetPlugin ? ' (target with the plugin)' : ''}`
      ctx.progress.step(`2/6 replication: ${label}, ${events.toLocaleString('en-US')} events, ${REPLICATION_CONCURRENCY} in flight`)
      const token = randomBytes(16).toString('hex')
      const target = await startTarget({
        mode: 'identity', region, token, expect: events,
        ...(targetPlugin ? { plugin: { natsUrl: nats.url, namespace, signingKey: ctx.signingKey } } : {})
      })
      const config: ReplicatorChildConfig = {
        mode,
        natsUrl: nats.url,
        namespace,
        region,
        instance: `${region}-${mode}`,
        targetUrl: target.url,
        token,
        signingKey: ctx.signingKey,
        concurrency: REPLICATION_CONCURRENCY,
        expect: events
      }
      let client: Child | undefined
      try {
        client = startClient(ctx, config, `replication-${mode}${targetPlugin ? '-plugin' : ''}`)
        const meter = new CpuMeter({ client: client.pid, target: target.child.pid, nats: natsServerPid(nats.port) })
        if (mode === 'raw') {
          ctx.progress.update('reading the backlog and building the replays (not timed)')
          await client.next('loaded', 120_000)
          meter.start()
          client.send({ type: 'go' })
        } else {
          meter.start()
          await client.next('ready', 60_000)
        }
        const done = await waitForTarget(ctx, target.child, events, timeoutMs)
        const cpu = meter.stop()
        const stats = await client.ask<Message & { peakRss: number }>({ type: 'stats' }, 'stats')
        const rate = targetRate(done)
        runs.push({
          mode,
          targetPlugin,
          region,
          events: done.count,
          seconds: round(rate.seconds, 3),
          eventsPerSec: round(rate.eventsPerSec, 0),
          non2xx: done.non2xx,
          peakRssMB: round(stats.peakRss / MB, 1),
          cpuUsPerEvent: { client: perEvent(cpu.client, done.count), target: perEvent(cpu.target, done.count), nats: perEvent(cpu.nats, done.count) },
          otherCores: cpu.others === null || cpu.others === undefined ? null : round(cpu.others / 1000 / rate.seconds, 2)
        })
      } finally {
        await stopAll([client, target.child])
      }
      await sleep(500)
    }
  })
  const by = (m: ReplicationMode, plugin = false): ReplicationRun => runs.find((r) => r.mode === m && r.targetPlugin === plugin) as ReplicationRun
  return {
    conditions: {
      backlog: backlog as Backlog,
      target: 'example identity API without the plugin, then with it, its own process; POST /v3/users with the source id injected, answered 201',
      concurrency: REPLICATION_CONCURRENCY,
      partitions: DEFAULT_PARTITIONS,
      measuredAt: "the target: first write's arrival to the last write's 2xx"
    },
    runs,
    vsRaw: round(by('replicator').eventsPerSec / by('raw').eventsPerSec, 3),
    vsBaseline: round(by('replicator').eventsPerSec / by('baseline').eventsPerSec, 3),
    vsRawWithPlugin: round(by('replicator', true).eventsPerSec / by('raw', true).eventsPerSec, 3)
  }
}
