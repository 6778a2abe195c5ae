import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { jetstream, jetstreamManager } from '@nats-io/jetstream'
import { connectNats, names, type RegionsyncEvent } from '@regionsync/shared'
import type { ApiChildConfig } from './api-child.js'
import { userBody } from './backlog.js'
import { openLoop, type OpenLoopResult } from './load.js'
import { Child, type Message } from './children.js'
import { CpuMeter, natsServerPid } from './cpu.js'
import { profileArgs, startClient, startTarget, stopAll, withNats, type BenchContext } from './context.js'
import { REPLICATION_CONCURRENCY } from './replication.js'
import { percentile, round, sleep, uniqueNamespace } from './util.js'

export const LAG_REGIONS = ['eu', 'ap'] as const
const CATCH_UP_TIMEOUT_MS = 60_000

export interface RegionLagStats {
  region: string
  events: number
  p50Ms: number
  p90Ms: number
  p99Ms: number
  maxMs: number
  /** Per second of commit time after the warm-up: the worst lag of an event committed in it (shows stalls). */
  maxBySecondMs: number[]
}

/** One offered rate, measured after the deployment ran at it for its warm-up. */
export interface LagRun {
  offeredRate: number
  /** Share of the measured capacity this rate is, when it was derived from it. */
  share: number | null
  warmupSeconds: number
  /** What the open-loop client achieved against the source API (latency from each request's due time). */
  source: OpenLoopResult
  regions: RegionLagStats[]
  worstP99Ms: number
  /** CPU each process used during the load, in cores (1 = one core busy all the time). */
  cores: Record<string, number | null>
}

export interface LagResult {
  conditions: {
    rateBasis: string
    durationSeconds: number
    bodyBytes: number
    regions: string[]
    replicatorsPerRegion: number
    clock: string
  }
  /** In the order run, lowest rate first, on one deployment. */
  runs: LagRun[]
}

export interface OfferedRate {
  rate: number
  share: number | null
}

interface Phase {
  rate: OfferedRate
  warmupSeconds: number
  from: number
  to: number
  source: OpenLoopResult
  cores: Record<string, number | null>
}

/**
 * 3. End-to-end lag at fixed offered rates (open loop): the source API with the plugin, two target
 * regions (each the example API in its own process) and one replicator per region, all started
 * once; each rate runs for a warm-up and then a measured stretch, and both regions catch up before
 * the next. Lag is the target's 2xx time minus the event's `committedAt` (the source's commit),
 * per event committed in a measured stretch. All processes share this machine's clock.
 */
export async function runLag (ctx: BenchContext, rates: OfferedRate[], rateBasis: string): Promise<LagResult> {
  // Seven cold processes start at once: the first seconds build a backlog the rest then drains.
  const firstWarmupSeconds = ctx.quick ? 2 : 10
  const stepWarmupSeconds = ctx.quick ? 1 : 3
  const durationSeconds = ctx.quick ? 3 : 20
  const body = userBody(0)
  let result: LagResult | undefined
  await withNats(ctx, async (nats) => {
    const namespace = uniqueNamespace('lag')
    const spoolDir = await mkdtemp(join(tmpdir(), 'regionsync-bench-spool-'))
    const children: Child[] = []
    try {
      ctx.progress.step(`3/6 lag: starting the source API, ${LAG_REGIONS.length} target regions and their replicators`)
      const apiConfig: ApiChildConfig = { region: 'us', plugin: { natsUrl: nats.url, namespace, signingKey: ctx.signingKey, spoolDir, spoolMaxEvents: 1_000_000 } }
      const source = new Child('source api', './api-child.js', apiConfig, profileArgs(ctx, 'lag-source-api'))
      children.push(source)
      const { url: sourceUrl } = await source.next<Message & { url: string }>('ready', 30_000)
      const targets = new Map<string, Child>()
      const pids: Record<string, number | null> = { source: source.pid, nats: natsServerPid(nats.port) }
      for (const region of LAG_REGIONS) {
        const token = randomBytes(16).toString('hex')
        const target = await startTarget({ mode: 'identity', region, token, expect: Number.MAX_SAFE_INTEGER, recordApplied: true })
        children.push(target.child)
        targets.set(region, target.child)
        pids[`target-${region}`] = target.child.pid
        const rep = startClient(ctx, {
          mode: 'replicator', natsUrl: nats.url, namespace, region, instance: `${region}-1`, targetUrl: target.url, token,
          signingKey: ctx.signingKey, concurrency: REPLICATION_CONCURRENCY, expect: 0
        }, `lag-replicator-${region}`)
        children.push(rep)
        pids[`replicator-${region}`] = rep.pid
        await rep.next('ready', 60_000)
      }

      const phases: Phase[] = []
      let written = 0
      for (const [i, rate] of rates.entries()) {
        const warmupSeconds = i === 0 ? firstWarmupSeconds : stepWarmupSeconds
        ctx.progress.step(`3/6 lag: ${rate.rate} writes/s open loop for ${warmupSeconds} + ${durationSeconds} s`)
        const from = Date.now() + warmupSeconds * 1000
        const meter = new CpuMeter(pids)
        meter.start()
        const loadStarted = performance.now()
        const source$ = await openLoop(sourceUrl, body, rate.rate, warmupSeconds + durationSeconds, warmupSeconds, (sent) => ctx.progress.update(`${sent} writes sent`))
        const to = Date.now()
        const cpu = meter.stop()
        const loadSeconds = (performance.now() - loadStarted) / 1000
        written += source$.ok
        phases.push({
          rate,
          warmupSeconds,
          from,
          to,
          source: source$,
          cores: Object.fromEntries(Object.entries(cpu).map(([k, ms]) => [k === 'bench' ? 'load-generator' : k, ms === null ? null : round(ms / 1000 / loadSeconds, 2)]))
        })
        ctx.progress.step('3/5 lag: waiting for both regions to catch up')
        await catchUp(ctx, targets, written)
      }

      const committed = await commitTimes(nats.url, namespace, written)
      const applied = new Map<string, Array<[string, number]>>()
      for (const [region, target] of targets) {
        applied.set(region, (await target.ask<Message & { times: Array<[string, number]> }>({ type: 'applied' }, 'applied')).times)
      }
      result = {
        conditions: {
          rateBasis,
          durationSeconds,
          bodyBytes: Buffer.byteLength(body),
          regions: [...LAG_REGIONS],
          replicatorsPerRegion: 1,
          clock: 'committedAt has millisecond resolution; applied time is the target\'s onResponse'
        },
        runs: phases.map((phase) => {
          const regions = [...applied].map(([region, times]) => lagStats(region, times, committed, phase.from, phase.to, durationSeconds))
          return {
            offeredRate: phase.rate.rate,
            share: phase.rate.share,
            warmupSeconds: phase.warmupSeconds,
            source: phase.source,
            regions,
            worstP99Ms: Math.max(...regions.map((r) => r.p99Ms)),
            cores: phase.cores
          }
        })
      }
    } finally {
      await stopAll(children)
      await rm(spoolDir, { recursive: true, force: true })
    }
  })
  return result as LagResult
}

/** Waits (bounded) until every region's target has answered `written` writes. */
async function catchUp (ctx: BenchContext, targets: Map<string, Child>, written: number): Promise<void> {
  const deadline = Date.now() + CATCH_UP_TIMEOUT_MS
  for (const [region, target] of targets) {
    for (;;) {
      const p = await target.ask<Message & { count: number }>({ type: 'progress' }, 'progress')
      ctx.progress.update(`${region}: ${p.count} / ${written}`)
      if (p.count >= written) break
      if (Date.now() > deadline) throw new Error(`region ${region} applied ${p.count} of ${written} within ${CATCH_UP_TIMEOUT_MS} ms`)
      await sleep(200)
    }
  }
}

function lagStats (region: string, applied: Array<[string, number]>, committed: Map<string, number>, from: number, to: number, seconds: number): RegionLagStats {
  const lags: number[] = []
  const maxBySecondMs: number[] = Array.from({ length: seconds }, () => 0)
  for (const [id, at] of applied) {
    const c = committed.get(id)
    if (c === undefined || c < from || c >= to) continue
    lags.push(at - c)
    const second = Math.floor((c - from) / 1000)
    if (second < seconds) maxBySecondMs[second] = Math.max(maxBySecondMs[second] ?? 0, Math.round(at - c))
  }
  return {
    region,
    events: lags.length,
    p50Ms: round(percentile(lags, 50), 1),
    p90Ms: round(percentile(lags, 90), 1),
    p99Ms: round(percentile(lags, 99), 1),
    maxMs: round(percentile(lags, 100), 1),
    maxBySecondMs
  }
}

/** The commit time (ms since epoch) of every event on the stream, by event id. */
async function commitTimes (natsUrl: string, namespace: string, expect: number): Promise<Map<string, number>> {
  const nc = await connectNats({ servers: natsUrl, name: 'bench-lag-reader' })
  const out = new Map<string, number>()
  try {
    const stream = names(namespace).eventStream
    const total = (await (await jetstreamManager(nc)).streams.info(stream)).state.messages
    if (total < expect) throw new Error(`the stream holds ${total} events, the source answered ${expect} writes 2xx`)
    const messages = await (await jetstream(nc).consumers.get(stream)).consume({ max_messages: 1000 })
    const deadline = setTimeout(() => messages.stop(), 60_000)
    for await (const m of messages) {
      const e = m.json<RegionsyncEvent>()
      out.set(e.id, Date.parse(e.committedAt))
      if (out.size >= total) break
    }
    clearTimeout(deadline)
    messages.stop()
  } finally {
    await nc.close()
  }
  return out
}
