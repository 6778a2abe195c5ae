import { DEFAULT_PARTITIONS } from '@regionsync/shared'
import { publishBacklog } from './backlog.js'
import type { Child, Message } from './children.js'
import { CpuMeter } from './cpu.js'
import { startClient, startTarget, stopAll, targetRate, waitForTarget, withNats, type BenchContext } from './context.js'
import { round, sleep, uniqueNamespace } from './util.js'

export const SLOW_TARGET_MS = 5
/** "Nearly double". */
export const SCALING_TARGET = 1.8

export type ScalingSetupName = 'instance-bound' | 'partition-bound'

interface SetupSpec {
  name: ScalingSetupName
  partitions: number
  /** Replays in flight per instance (`--concurrency`). */
  concurrency: number
  /** What the setup shows. */
  about: string
}

/**
 * Two deployments of one region. Instances add throughput when what binds is an instance's own
 * `--concurrency` (or its CPU); the partitions cap the region whatever the instance count, since
 * each holds one event at a time (max_ack_pending 1). The target is judged on the first, where the
 * queue group's spreading of work is what is measured; the second is the default deployment,
 * reported so its ceiling is not mistaken for the queue group's.
 */
const SETUPS: SetupSpec[] = [
  { name: 'instance-bound', partitions: 64, concurrency: 8, about: '64 partitions, --concurrency 8 per instance' },
  { name: 'partition-bound', partitions: DEFAULT_PARTITIONS, concurrency: DEFAULT_PARTITIONS, about: `the defaults: ${DEFAULT_PARTITIONS} partitions, --concurrency ${DEFAULT_PARTITIONS}` }
]

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

export interface ScalingSetup {
  name: ScalingSetupName
  about: string
  partitions: number
  concurrencyPerInstance: number
  /** What the target's answer time allows one instance, and the region whatever its instances. */
  instanceCeilingEventsPerSec: number
  regionCeilingEventsPerSec: number
  runs: ScalingRun[]
  ratio: number
}

export interface ScalingResult {
  conditions: { events: number, targetDelayMs: number, bodyBytes: number }
  setups: ScalingSetup[]
  /** 2 instances / 1 in the instance-bound setup: the judged figure. */
  ratio: number
}

/**
 * 5. Scaling with instances: per setup, one backlog applied to a target that takes 5 ms per
 * request, by one replicator instance (region eu) and by two instances of one region (region
 * ap): same stream, each region its own consumers, each run a fresh target.
 */
export async function runScaling (ctx: BenchContext): Promise<ScalingResult> {
  const events = ctx.quick ? 1_000 : 20_000
  const setups: ScalingSetup[] = []
  let bodyBytes = 0
  for (const [i, spec] of SETUPS.entries()) {
    const runs: ScalingRun[] = []
    await withNats(ctx, async (nats) => {
      const namespace = uniqueNamespace('scale')
      const step = `5/6 scaling ${i + 1}/${SETUPS.length} (${spec.about})`
      ctx.progress.step(`${step}: publishing a backlog of ${events.toLocaleString('en-US')} events`)
      const backlog = await publishBacklog(nats.url, namespace, ctx.signingKey, events, (done) => ctx.progress.update(`${done.toLocaleString('en-US')} published`), spec.partitions)
      bodyBytes = backlog.bodyBytes
      for (const [instances, region] of [[1, 'eu'], [2, 'ap']] as const) {
        ctx.progress.step(`${step}: ${instances} instance(s), target ${SLOW_TARGET_MS} ms per request`)
        runs.push(await measureInstances(ctx, nats.url, namespace, spec, region, instances, events))
        await sleep(500)
      }
    })
    const [one, two] = runs as [ScalingRun, ScalingRun]
    setups.push({
      name: spec.name,
      about: spec.about,
      partitions: spec.partitions,
      concurrencyPerInstance: spec.concurrency,
      instanceCeilingEventsPerSec: Math.round(Math.min(spec.concurrency, spec.partitions) * 1000 / SLOW_TARGET_MS),
      regionCeilingEventsPerSec: Math.round(spec.partitions * 1000 / SLOW_TARGET_MS),
      runs,
      ratio: round(two.eventsPerSec / one.eventsPerSec, 3)
    })
  }
  return {
    conditions: { events, targetDelayMs: SLOW_TARGET_MS, bodyBytes },
    setups,
    ratio: (setups.find((s) => s.name === 'instance-bound') as ScalingSetup).ratio
  }
}

async function measureInstances (ctx: BenchContext, natsUrl: string, namespace: string, spec: SetupSpec, region: string, instances: number, events: number): Promise<ScalingRun> {
  const target = await startTarget({ mode: 'stub', region, delayMs: SLOW_TARGET_MS, expect: events })
  const reps: Child[] = []
  try {
    for (let i = 1; i <= instances; i++) {
      reps.push(startClient(ctx, {
        mode: 'replicator', natsUrl, namespace, region, instance: `${region}-${i}`, targetUrl: target.url, token: 'bench',
        signingKey: ctx.signingKey, concurrency: spec.concurrency, expect: events
      }, `scaling-${spec.name}-${region}-${i}`))
    }
    const meter = new CpuMeter(Object.fromEntries(reps.map((r, i) => [`r${i}`, r.pid])))
    await Promise.all(reps.map(async (r) => await r.next('ready', 60_000)))
    meter.start()
    const done = await waitForTarget(ctx, target.child, events, ctx.quick ? 60_000 : 180_000)
    const cpu = meter.stop()
    const stats = await Promise.all(reps.map(async (r) => await r.ask<Message & { applied: number }>({ type: 'stats' }, 'stats')))
    const rate = targetRate(done)
    const used = reps.map((_, i) => cpu[`r${i}`]).reduce<number | null>((a, b) => a === null || b === null || b === undefined ? null : a + b, 0)
    return {
      instances,
      region,
      eventsPerSec: round(rate.eventsPerSec, 0),
      seconds: round(rate.seconds, 2),
      perInstance: stats.map((s) => s.applied),
      cpuUsPerEvent: used === null ? null : round((used * 1000) / done.count, 0),
      otherCores: cpu.others === null || cpu.others === undefined ? null : round(cpu.others / 1000 / rate.seconds, 2)
    }
  } finally {
    await stopAll([...reps, target.child])
  }
}
