import { DEFAULT_PARTITIONS } from '@regionsync/shared'
import { sectionBacklog } from './backlog.js'
import type { Child, Message } from './children.js'
import { CpuMeter } from './cpu.js'
import { CpuQuota } from './cpu-quota.js'
import { startClient, startTarget, stopAll, targetRate, waitForTarget, withNats, type BenchContext } from './context.js'
import { percentile, round, sleep } from './util.js'

export const SLOW_TARGET_MS = 5
/** "Nearly double". */
export const SCALING_TARGET = 1.8
/**
 * Each instance's CPU budget, as a pod's CPU limit. On this 2-core machine one unconstrained
 * replicator already takes what nats-server, the target and the bench leave it, so a second
 * instance could only share the same cores and "2 instances / 1" would measure the machine. At
 * 0.35 of a core each, two instances hold 0.7 and leave the rest of the machine its headroom: what
 * binds is each instance's own budget, and a second instance brings a second budget, as a second
 * pod does.
 */
export const INSTANCE_CPU_CORES = 0.35
/**
 * 1 then 2 instances, this many times over, alternating: the judged ratio is the median of the
 * pairs'. With four processes on two cores, one pair's ratio moved by up to a quarter from run to run
 * (1.47 to 1.99 measured), so one pair is a draw, not a figure.
 */
const PAIRS = 3
/**
 * The rate is taken after this share of the backlog is applied: before it, each instance is still
 * compiling its hot code (V8's optimiser runs within the instance's CPU budget too) and the
 * instances are sharing out the partitions. Two instances pay that twice in a run half as long.
 */
const WARM_UP_SHARE = 0.2

export interface ScalingRun {
  instances: number
  region: string
  /** Applied per second once WARM_UP_SHARE of the backlog was: the judged rate. */
  eventsPerSec: number
  /** From the first event to the last, warm-up included. */
  wholeRunEventsPerSec: number
  seconds: number
  /** Events each instance applied: how the instances shared the partitions. */
  perInstance: number[]
  /** CPU the instances used per event applied (together), and the rest of the machine, in cores. */
  cpuUsPerEvent: number | null
  otherCores: number | null
}

export interface ScalingResult {
  conditions: {
    events: number
    targetDelayMs: number
    bodyBytes: number
    partitions: number
    /** Each instance's CPU budget; null when cgroups could not be made here (then unconstrained). */
    cpuQuotaCores: number | null
    /** Why the instances ran without a budget, when they did. */
    unconstrainedBecause: string | null
    /** Share of the backlog applied before the rate is counted. */
    warmUpShare: number
  }
  runs: ScalingRun[]
  /** 2 instances / 1, each pair in the order run. */
  pairRatios: number[]
  /** The median of pairRatios: the judged figure. */
  ratio: number
}

/**
 * 5. Scaling with instances: one backlog applied to a target that takes 5 ms per request, by one
 * replicator instance (region eu<n>) and by two instances of one region (region ap<n>), every instance
 * with its own CPU budget (a cgroup CPU quota, as a pod's CPU limit), the defaults otherwise.
 */
export async function runScaling (ctx: BenchContext): Promise<ScalingResult> {
  // Long enough for a steady state: with 10,000 events the two-instance runs spent a quarter more
  // CPU per event than the one-instance run (the optimiser still at work within each instance's
  // budget); with 40,000, a tenth more at most.
  const events = ctx.quick ? 1_000 : 40_000
  const pairs = ctx.quick ? 1 : PAIRS
  const unconstrainedBecause = CpuQuota.unavailable()
  if (unconstrainedBecause !== null) process.stderr.write(`\nbench scaling: instances run without a CPU budget: ${unconstrainedBecause}\n`)
  const runs: ScalingRun[] = []
  let bodyBytes = 0
  await withNats(ctx, async (nats) => {
    const { namespace, backlog } = await sectionBacklog(ctx, nats.url, { step: '5/6 scaling', namespacePrefix: 'scale', count: events })
    bodyBytes = backlog.bodyBytes
    for (let pair = 1; pair <= pairs; pair++) {
      // A region of its own for each run: each reads the whole backlog from the start.
      for (const [instances, region] of [[1, `eu${pair}`], [2, `ap${pair}`]] as const) {
        ctx.progress.step(`5/6 scaling: pair ${pair}/${pairs}, ${instances} instance(s)${unconstrainedBecause === null ? `, ${INSTANCE_CPU_CORES} CPU each` : ''}, target ${SLOW_TARGET_MS} ms per request`)
        runs.push(await measureInstances(ctx, nats.url, namespace, region, instances, events, unconstrainedBecause === null))
        await sleep(500)
      }
    }
  })
  const pairRatios: number[] = []
  for (let i = 0; i + 1 < runs.length; i += 2) pairRatios.push(round((runs[i + 1] as ScalingRun).eventsPerSec / (runs[i] as ScalingRun).eventsPerSec, 3))
  return {
    conditions: {
      events,
      targetDelayMs: SLOW_TARGET_MS,
      bodyBytes,
      partitions: DEFAULT_PARTITIONS,
      cpuQuotaCores: unconstrainedBecause === null ? INSTANCE_CPU_CORES : null,
      unconstrainedBecause,
      warmUpShare: WARM_UP_SHARE
    },
    runs,
    pairRatios,
    ratio: percentile(pairRatios, 50)
  }
}

async function measureInstances (ctx: BenchContext, natsUrl: string, namespace: string, region: string, instances: number, events: number, limited: boolean): Promise<ScalingRun> {
  const target = await startTarget({ mode: 'stub', region, delayMs: SLOW_TARGET_MS, expect: events })
  const reps: Child[] = []
  const quotas: CpuQuota[] = []
  try {
    for (let i = 1; i <= instances; i++) {
      const rep = startClient(ctx, {
        mode: 'replicator', natsUrl, namespace, region, instance: `${region}-${i}`, targetUrl: target.url, token: 'bench',
        signingKey: ctx.signingKey, expect: events
      }, `scaling-${region}-${i}`)
      reps.push(rep)
      if (limited) {
        // Moved in before it has connected: everything it does runs within its budget.
        const quota = CpuQuota.create(`${region}-${i}`, INSTANCE_CPU_CORES)
        quotas.push(quota)
        quota.add(rep.pid)
      }
    }
    // The target reports its count about every second; the steady rate starts at the first report past the warm-up.
    const progress: Array<{ count: number, atMs: number }> = []
    target.child.on('progress', (m) => progress.push({ count: m.count as number, atMs: m.nowMs as number }))
    const meter = new CpuMeter(Object.fromEntries(reps.map((r, i) => [`r${i}`, r.pid])))
    await Promise.all(reps.map(async (r) => await r.next('ready', 60_000)))
    meter.start()
    const done = await waitForTarget(ctx, target.child, events, ctx.quick ? 60_000 : 180_000)
    const cpu = meter.stop()
    const stats = await Promise.all(reps.map(async (r) => await r.ask<Message & { applied: number }>({ type: 'stats' }, 'stats')))
    const rate = targetRate(done)
    const warm = progress.find((p) => p.count >= events * WARM_UP_SHARE && p.count < done.count)
    const steady = warm === undefined || done.lastMs <= warm.atMs ? null : (done.count - warm.count) / ((done.lastMs - warm.atMs) / 1000)
    const used = reps.map((_, i) => cpu[`r${i}`]).reduce<number | null>((a, b) => a === null || b === null || b === undefined ? null : a + b, 0)
    return {
      instances,
      region,
      // A run too short for a report past the warm-up (a quick run) is taken whole.
      eventsPerSec: round(steady ?? rate.eventsPerSec, 0),
      wholeRunEventsPerSec: round(rate.eventsPerSec, 0),
      seconds: round(rate.seconds, 2),
      perInstance: stats.map((s) => s.applied),
      cpuUsPerEvent: used === null ? null : round((used * 1000) / done.count, 0),
      otherCores: cpu.others === null || cpu.others === undefined ? null : round(cpu.others / 1000 / rate.seconds, 2)
    }
  } finally {
    await stopAll([...reps, target.child])
    for (const q of quotas) q.remove()
  }
}
