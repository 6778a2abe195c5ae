import { sectionBacklog, type Backlog } from './backlog.js'
import { procMemory, type Child, type Message } from './children.js'
import { CpuMeter } from './cpu.js'
import { startClient, startTarget, stopAll, targetRate, waitForTarget, withNats, type BenchContext } from './context.js'
import { REPLICATION_CONCURRENCY } from './replication.js'
import { MB, round, sleep } from './util.js'

const SAMPLE_MS = 100
/** "Flat": the large backlog's peak RSS is at most this much above the small one's. */
export const FLAT_RATIO = 1.2
export const RSS_LIMIT_MB = 150
const TIMELINE_POINTS = 20
/**
 * The suite must end within its time budget: a drain still running after this long is stopped,
 * and the run reports how many events it applied (the backlog still waiting is what matters).
 */
const DRAIN_LIMIT_S = 120
const DRAIN_LIMIT_QUICK_S = 25

export interface MemoryRun {
  backlog: number
  /** Events applied while sampled: the whole backlog unless the drain hit its time limit. */
  applied: number
  /** Events still waiting when the sampling stopped. */
  waitingAtEnd: number
  /** VmHWM of the replicator process: the kernel's own high-water mark of its resident set. */
  peakRssMB: number
  meanRssMB: number
  /** Heap in use at its highest (sampled in the child every 50 ms). */
  peakHeapMB: number
  /** Heap still in use after a full garbage collection once the drain ended. */
  retainedHeapMB: number | null
  drainSeconds: number
  eventsPerSec: number
  /** RSS over the drain, MB: the highest sample in each of TIMELINE_POINTS equal slices of time (every sample of a short drain). */
  rssTimelineMB: number[]
  /** CPU the replicator used per event applied, and the rest of the machine, in cores. */
  cpuUsPerEvent: number | null
  otherCores: number | null
}

export interface MemoryResult {
  conditions: { backlogs: number[], bodyBytes: number, eventBytes: number, target: string, concurrency: number, sampling: string, drainLimitSeconds: number }
  runs: MemoryRun[]
  /** Peak RSS, large backlog / small. */
  ratio: number
  /**
   * Retained heap, large backlog / small: what flatness is judged on. Peak RSS also follows when
   * V8 chooses to collect, and a small backlog drained in a few seconds ends before V8 has grown
   * its heap to the size it keeps under steady load.
   */
  retainedRatio: number | null
}

function timeline (samples: number[]): number[] {
  if (samples.length <= TIMELINE_POINTS) return samples.map((b) => round(b / MB, 0))
  const out: number[] = []
  const per = samples.length / TIMELINE_POINTS
  for (let i = 0; i < TIMELINE_POINTS; i++) {
    out.push(round(Math.max(...samples.slice(Math.floor(i * per), Math.floor((i + 1) * per))) / MB, 0))
  }
  return out
}

/**
 * 4. Replicator memory with a large backlog: the backlog is on the stream before the replicator
 * process starts; its RSS is sampled from /proc while it drains everything to a target that
 * answers at once. Each backlog gets a fresh nats-server.
 */
export async function runMemory (ctx: BenchContext): Promise<MemoryResult> {
  const sizes = ctx.quick ? [1_000, 5_000] : [10_000, 200_000]
  const drainLimitSeconds = ctx.quick ? DRAIN_LIMIT_QUICK_S : DRAIN_LIMIT_S
  const runs: MemoryRun[] = []
  let backlog: Backlog | undefined
  for (const size of sizes) {
    await withNats(ctx, async (nats) => {
      const { namespace, backlog: published } = await sectionBacklog(ctx, nats.url, { step: '4/6 memory', namespacePrefix: 'mem', count: size })
      backlog = published
      ctx.progress.step(`4/6 memory: replicator draining ${size.toLocaleString('en-US')} events`)
      const target = await startTarget({ mode: 'stub', region: 'eu', expect: size })
      let rep: Child | undefined
      const samples: number[] = []
      try {
        rep = startClient(ctx, {
          mode: 'replicator', natsUrl: nats.url, namespace, region: 'eu', instance: 'eu-mem', targetUrl: target.url, token: 'bench',
          signingKey: ctx.signingKey, concurrency: REPLICATION_CONCURRENCY, expect: size
        }, `memory-${size}`, ['--expose-gc'])
        const pid = rep.pid
        const meter = new CpuMeter({ replicator: pid })
        meter.start()
        const sampler = setInterval(() => { const m = procMemory(pid); if (m !== null) samples.push(m.rss) }, SAMPLE_MS)
        try {
          await rep.next('ready', 60_000)
          const done = await waitForTarget(ctx, target.child, size, drainLimitSeconds * 1000, true)
          const peak = procMemory(pid)
          const cpu = meter.stop()
          const stats = await rep.ask<Message & { peakHeap: number, peakRss: number, retainedHeap: number | null }>({ type: 'stats', gc: true }, 'stats')
          const rate = targetRate(done)
          runs.push({
            backlog: size,
            applied: done.count,
            waitingAtEnd: size - done.count,
            peakRssMB: round(Math.max(peak?.hwm ?? 0, stats.peakRss) / MB, 1),
            meanRssMB: round(samples.reduce((a, b) => a + b, 0) / Math.max(1, samples.length) / MB, 1),
            peakHeapMB: round(stats.peakHeap / MB, 1),
            retainedHeapMB: stats.retainedHeap === null ? null : round(stats.retainedHeap / MB, 1),
            drainSeconds: round(rate.seconds, 2),
            eventsPerSec: round(rate.eventsPerSec, 0),
            rssTimelineMB: timeline(samples),
            cpuUsPerEvent: cpu.replicator === null || cpu.replicator === undefined ? null : round((cpu.replicator * 1000) / Math.max(1, done.count), 0),
            otherCores: cpu.others === null || cpu.others === undefined ? null : round(cpu.others / 1000 / Math.max(0.001, rate.seconds), 2)
          })
        } finally {
          clearInterval(sampler)
        }
      } finally {
        await stopAll([rep, target.child])
      }
    })
    await sleep(500)
  }
  const [small, large] = runs as [MemoryRun, MemoryRun]
  return {
    conditions: {
      backlogs: sizes,
      bodyBytes: backlog?.bodyBytes ?? 0,
      eventBytes: backlog?.eventBytes ?? 0,
      target: 'a stub answering 201 at once, its own process',
      concurrency: REPLICATION_CONCURRENCY,
      sampling: `/proc/<pid>/status VmRSS every ${SAMPLE_MS} ms, peak = VmHWM`,
      drainLimitSeconds
    },
    runs,
    ratio: round(large.peakRssMB / small.peakRssMB, 3),
    retainedRatio: large.retainedHeapMB === null || small.retainedHeapMB === null ? null : round(large.retainedHeapMB / small.retainedHeapMB, 3)
  }
}
