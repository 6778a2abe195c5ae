import { jetstreamManager } from '@nats-io/jetstream'
import { identityVerifyConfig } from '@regionsync/examples'
import { connectNats, defaultStreamSettings, ensureEventStream, names } from '@regionsync/shared'
import { Child, procMemory, type Message } from './children.js'
import { stopAll, withNats, type BenchContext } from './context.js'
import type { VerifyApiChildConfig } from './verify-api-child.js'
import type { VerifyChildConfig } from './verify-child.js'
import { MB, round, uniqueNamespace } from './util.js'

/** Users per region: a smaller run beside the judged one shows whether memory grows with the count. */
const SIZES = [10_000, 100_000]
const SIZES_QUICK = [2_000, 10_000]
/** Planted in eu: users missing, extra and different (ap matches the source). */
const PLANTED = 10
/** The example API's own page limit. */
const PAGE_SIZE = 1000
/** High enough that the run measures verify, not the limiter; the limiter is what an operator sets. */
const MAX_RPS = 100_000
const RUN_LIMIT_MS = 600_000
/** "Flat": the largest run's peak live heap at most this much above the smallest's (ten times fewer resources). */
export const VERIFY_FLAT_RATIO = 1.3

export interface VerifyRun {
  resources: number
  regions: number
  seconds: number
  resourcesPerSec: number
  cpuSeconds: number
  /** VmHWM of the verify process, and its RSS before it began comparing. */
  peakRssMB: number
  startRssMB: number
  peakHeapMB: number
  /** The most still in use after a full collection (sampled every second): what verify holds. */
  peakLiveHeapMB: number
  requests: number
  /** Differences it reported / planted. */
  found: number
  planted: number
}

export interface VerifyResult {
  conditions: { pageSize: number, regions: string[], planted: string, paging: string, concurrency: number }
  runs: VerifyRun[]
  /** Peak RSS, largest run / smallest (context: it follows when V8 collects). */
  rssRatio: number
  /** Peak live heap, largest run / smallest: what flatness is judged on. */
  liveHeapRatio: number
}

export async function runVerifyBench (ctx: BenchContext): Promise<VerifyResult> {
  const sizes = ctx.quick ? SIZES_QUICK : SIZES
  return await withNats(ctx, async (nats) => {
    const ns = uniqueNamespace('verify')
    const nc = await connectNats({ servers: nats.url })
    try {
      await ensureEventStream(nc, await jetstreamManager(nc), names(ns), defaultStreamSettings())
    } finally {
      await nc.close()
    }
    const runs: VerifyRun[] = []
    for (const resources of sizes) {
      ctx.progress.step(`verify: ${resources.toLocaleString('en-US')} users in each of 3 regions`)
      const apis = [
        { region: 'us', resources, missing: 0, extra: 0, different: 0 },
        { region: 'eu', resources, missing: PLANTED, extra: PLANTED, different: PLANTED },
        { region: 'ap', resources, missing: 0, extra: 0, different: 0 }
      ].map((c: VerifyApiChildConfig) => new Child(`api ${c.region}`, './verify-api-child.js', c))
      let verifier: Child | null = null
      try {
        const urls = await Promise.all(apis.map(async (a) => (await a.next<Message & { url: string }>('ready', 120_000)).url))
        const example = identityVerifyConfig('us', { us: { url: urls[0] as string }, eu: { url: urls[1] as string }, ap: { url: urls[2] as string } })
        // Users only: the bench's regions hold no projects.
        const config = { ...example, pageSize: PAGE_SIZE, maxRps: MAX_RPS, types: (example.types as unknown[]).slice(0, 1) }
        const vc: VerifyChildConfig = { config, nats: nats.url, namespace: ns }
        verifier = new Child('verify', './verify-child.js', vc, ['--expose-gc'])
        const ready = await verifier.next<Message & { rss: number }>('ready', 30_000)
        const done = await verifier.ask<Message & { seconds: number, cpuSeconds: number, peakHeap: number, peakLiveHeap: number, differences: number, requests: Record<string, number> }>({ type: 'run' }, 'done', RUN_LIMIT_MS)
        const mem = procMemory(verifier.pid)
        runs.push({
          resources,
          regions: 3,
          seconds: round(done.seconds, 2),
          resourcesPerSec: Math.round(resources / done.seconds),
          cpuSeconds: round(done.cpuSeconds, 2),
          peakRssMB: round((mem?.hwm ?? NaN) / MB, 1),
          startRssMB: round(ready.rss / MB, 1),
          peakHeapMB: round(done.peakHeap / MB, 1),
          peakLiveHeapMB: round(done.peakLiveHeap / MB, 1),
          requests: Object.values(done.requests).reduce((a, b) => a + b, 0),
          found: done.differences,
          planted: PLANTED * 3
        })
      } finally {
        await stopAll([verifier, ...apis])
      }
    }
    const first = runs[0]
    const last = runs[runs.length - 1]
    return {
      conditions: { pageSize: PAGE_SIZE, regions: ['us (source)', 'eu', 'ap'], planted: `${PLANTED} missing, ${PLANTED} extra, ${PLANTED} different in eu`, paging: 'cursor (marker)', concurrency: 4 },
      runs,
      rssRatio: first === undefined || last === undefined ? NaN : round(last.peakRssMB / first.peakRssMB, 2),
      liveHeapRatio: first === undefined || last === undefined ? NaN : round(last.peakLiveHeapMB / first.peakLiveHeapMB, 2)
    }
  })
}
