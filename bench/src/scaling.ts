import { DEFAULT_PARTITIONS } from '@regionsync/shared'
import { publishBacklog, type Backlog } from './backlog.js'
import type { Child, Message } from './children.js'
import { CpuMeter } from './cpu.js'
import { startClient, startTarget, stopAll, targetRate, waitForTarget, withNats, type BenchContext } from './context.js'
import { REPLICATION_CONCURRENCY } from './replication.js'
import { round, sleep, uniqueNamespace } from './util.js'

export const SLOW_TARGET_MS = 5
/** "Nearly double". */
export const SCALING_TARGET = 1.8

export interface ScalingRun {
  instances: number
  region: string
  eventsPerSec: number
  seconds: number
  /** Events each instance applied: how the durable consumers spread the work. */
  perInstance: number[]
  /** CPU the instances used per event applied (together), and the rest of the machine, in cores. */
  cpuUsPerEvent: number | null
  otherCores: number | null
}

export interface ScalingResult {
  conditions: { events: number, targetDelayMs: number, partitions: number, concurrencyPerInstance: number, ceilingEventsPerSec: number, bodyBytes: number }
  runs: ScalingRun[]
  ratio: number
}

/**
 * 5. Scaling with instances: one backlog, applied to a target that takes 5 ms per request, by one
 * replicator instance (region eu) and by two instances of one region (region ap): same stream,
 * each region its own consumers, each run a fresh target.
 */
export async function runScaling (ctx: BenchContext): Promise<ScalingResult> {
  const events = ctx.quick ? 1_000 : 20_000
  const runs: ScalingRun[] = []
  let backlog: Backlog | undefined
  await withNats(ctx, async (nats) => {
    const namespace = uniqueNamespace('scale')
    ctx.progress.step(`5/5 scaling: publishing a backlog of ${events.toLocaleString('en-US')} events`)
    backlog = await publishBacklog(nats.url, namespace, ctx.signingKey, events, (done) => ctx.progress.update(`${done.toLocaleString('en-US')} published`))
    for (const [instances, region] of [[1, 'eu'], [2, 'ap']] as const) {
      ctx.progress.step(`5/5 scaling: ${instances} instance(s), target ${SLOW_TARGET_MS} ms per request`)
      const target = await startTarget({ mode: 'stub', region, delayMs: SLOW_TARGET_MS, expect: events })
      const reps: Child[] = []
      try {
        for (let i = 1; i <= instances; i++) {
          reps.push(startClient(ctx, {
            mode: 'replicator', natsUrl: nats.url, namespace, region, instance: `${region}-${i}`, targetUrl: target.url, token: 'bench',
            signingKey: ctx.signingKey, concurrency: REPLICATION_CONCURRENCY, expect: events
          }, `scaling-${region}-${i}`))
        }
        const meter = new CpuMeter(Object.fromEntries(reps.map((r, i) => [`r${i}`, r.pid])))
        await Promise.all(reps.map(async (r) => await r.next('ready', 60_000)))
        meter.start()
        const done = await waitForTarget(ctx, target.child, events, ctx.quick ? 60_000 : 180_000)
        const cpu = meter.stop()
        const stats = await Promise.all(reps.map(async (r) => await r.ask<Message & { applied: number }>({ type: 'stats' }, 'stats')))
        const rate = targetRate(done)
        const used = reps.map((_, i) => cpu[`r${i}`]).reduce<number | null>((a, b) => a === null || b === null || b === undefined ? null : a + b, 0)
        runs.push({
          instances,
          region,
          eventsPerSec: round(rate.eventsPerSec, 0),
          seconds: round(rate.seconds, 2),
          perInstance: stats.map((s) => s.applied),
          cpuUsPerEvent: used === null ? null : round((used * 1000) / done.count, 0),
          otherCores: cpu.others === null || cpu.others === undefined ? null : round(cpu.others / 1000 / rate.seconds, 2)
        })
      } finally {
        await stopAll([...reps, target.child])
      }
      await sleep(500)
    }
  })
  const [one, two] = runs as [ScalingRun, ScalingRun]
  return {
    conditions: {
      events,
      targetDelayMs: SLOW_TARGET_MS,
      partitions: DEFAULT_PARTITIONS,
      concurrencyPerInstance: REPLICATION_CONCURRENCY,
      ceilingEventsPerSec: Math.round(DEFAULT_PARTITIONS * 1000 / SLOW_TARGET_MS),
      bodyBytes: backlog?.bodyBytes ?? 0
    },
    runs,
    ratio: round(two.eventsPerSec / one.eventsPerSec, 3)
  }
}
