import { randomBytes } from 'node:crypto'
import { DelayProxy } from '../../test/helpers/delay-proxy.js'
import { sectionBacklog, type Backlog } from './backlog.js'
import type { Child, Message } from './children.js'
import { startClient, startTarget, stopAll, waitForTarget, withNats, type BenchContext } from './context.js'
import { round, sleep } from './util.js'

/** Round trips between region `ap` and NATS (or its target) that the section measures. */
export const WAN_RTTS_MS = [0, 20, 80, 150]
export const WAN_QUICK_RTTS_MS = [0, 80]
/** The round trip the targets are judged at. */
export const WAN_JUDGED_RTT_MS = 80
/** At the judged round trip, 2 instances apply at least this share of what they apply at 0 ms. */
export const WAN_TARGET = 0.5

/**
 * Where the distance is:
 * - `nats-far`: region ap (its replicators, and its API whose plugin reads and writes replay
 *   records in JetStream KV) is far from NATS; the API is next to its replicators.
 * - `target-far`: the replicators run beside NATS; region ap's API is far from them, and so from
 *   NATS too (its plugin goes through the same distance).
 */
export type WanTopology = 'nats-far' | 'target-far'

export interface WanVariant {
  instances: number
  /** Events in flight per owned partition; null for the replicator's default. */
  window: number | null
}

export interface WanRun extends WanVariant {
  topology: WanTopology
  rttMs: number
  events: number
  seconds: number
  eventsPerSec: number
  /** Events per second / the same variant at 0 ms in this run. */
  vsZero: number | null
  /** The run stopped at its time box, before the whole backlog was applied. */
  timeBoxed: boolean
  non2xx: number
  perInstance: number[]
}

export interface WanResult {
  conditions: {
    backlog: Backlog
    target: string
    timeBoxSeconds: number
    rttsMs: number[]
  }
  runs: WanRun[]
  /** 2 instances at the judged round trip / at 0 ms, per topology (null when not measured). */
  natsFarRatio: number | null
  targetFarRatio: number | null
}

/** The default deployment with 1 and 2 instances, and one-at-a-time mode beside it. */
const VARIANTS: WanVariant[] = [
  { instances: 1, window: null },
  { instances: 2, window: null },
  { instances: 2, window: 1 }
]

/**
 * 6. WAN: region `ap` applies one backlog with a delay proxy (test/helpers/delay-proxy.ts) between
 * it and NATS at each round trip, then with the distance between the replicators and the target
 * instead. The target is the example API with the plugin, in its own process, as a real region
 * runs it. Every run is its own region name (its own consumers and replay records) on one backlog,
 * time-boxed: the rate is what the target answered from its first write to the box's end.
 */
export async function runWan (ctx: BenchContext): Promise<WanResult> {
  const rtts = ctx.quick ? WAN_QUICK_RTTS_MS : WAN_RTTS_MS
  const variants = ctx.quick ? VARIANTS.filter((v) => v.instances === 2) : VARIANTS
  const timeBoxMs = ctx.quick ? 4_000 : 12_000
  // Enough that the fastest run (loopback, 2 instances) does not run out within its box.
  const events = ctx.quick ? 10_000 : 40_000
  const plan: Array<{ topology: WanTopology, rttMs: number, variant: WanVariant }> = [
    ...rtts.flatMap((rttMs) => variants.map((variant) => ({ topology: 'nats-far' as const, rttMs, variant }))),
    ...variants.filter((v) => v.window === null).map((variant) => ({ topology: 'target-far' as const, rttMs: WAN_JUDGED_RTT_MS, variant }))
  ]
  const runs: WanRun[] = []
  let backlog: Backlog | undefined
  await withNats(ctx, async (nats) => {
    const { namespace, backlog: published } = await sectionBacklog(ctx, nats.url, { step: '6/6 wan', namespacePrefix: 'wan', count: events })
    backlog = published
    for (const [i, p] of plan.entries()) {
      const label = `${p.topology} ${p.rttMs} ms, ${p.variant.instances} instance(s)${p.variant.window === null ? '' : `, --window ${p.variant.window}`}`
      ctx.progress.step(`6/6 wan ${i + 1}/${plan.length}: ${label}`)
      runs.push(await measure(ctx, { natsPort: nats.port, namespace, events, timeBoxMs, region: `ap-${i + 1}`, ...p }))
      await sleep(300)
    }
  })
  for (const r of runs) {
    const zero = runs.find((z) => z.topology === 'nats-far' && z.rttMs === 0 && z.instances === r.instances && z.window === r.window)
    r.vsZero = zero === undefined || !(zero.eventsPerSec > 0) ? null : round(r.eventsPerSec / zero.eventsPerSec, 3)
  }
  const judged = (t: WanTopology): number | null =>
    runs.find((r) => r.topology === t && r.rttMs === WAN_JUDGED_RTT_MS && r.instances === 2 && r.window === null)?.vsZero ?? null
  return {
    conditions: {
      backlog: backlog as Backlog,
      target: 'example identity API with the plugin (replay guard on), its own process',
      timeBoxSeconds: timeBoxMs / 1000,
      rttsMs: rtts
    },
    runs,
    natsFarRatio: judged('nats-far'),
    targetFarRatio: judged('target-far')
  }
}

interface RunSpec {
  natsPort: number
  namespace: string
  events: number
  timeBoxMs: number
  region: string
  topology: WanTopology
  rttMs: number
  variant: WanVariant
}

async function measure (ctx: BenchContext, s: RunSpec): Promise<WanRun> {
  const oneWayMs = s.rttMs / 2
  const proxies: DelayProxy[] = []
  const children: Array<Child | undefined> = []
  // 0 ms is loopback itself, no proxy: the figure every other is compared with.
  const delayed = async (port: number): Promise<number> => {
    if (s.rttMs === 0) return port
    const p = await DelayProxy.start({ target: { host: '127.0.0.1', port }, delayMs: oneWayMs })
    proxies.push(p)
    return p.port
  }
  try {
    const direct = `nats://127.0.0.1:${s.natsPort}`
    // Region ap's side of the distance reaches NATS through the proxy; in both topologies its API does.
    const far = `nats://127.0.0.1:${await delayed(s.natsPort)}`
    const token = randomBytes(16).toString('hex')
    const target = await startTarget({ mode: 'identity', region: s.region, token, expect: s.events, plugin: { natsUrl: far, namespace: s.namespace, signingKey: ctx.signingKey } })
    children.push(target.child)
    const targetUrl = s.topology === 'target-far' ? `http://127.0.0.1:${await delayed(Number(new URL(target.url).port))}` : target.url
    const reps: Child[] = []
    for (let i = 1; i <= s.variant.instances; i++) {
      const rep = startClient(ctx, {
        mode: 'replicator',
        natsUrl: s.topology === 'nats-far' ? far : direct,
        namespace: s.namespace,
        region: s.region,
        instance: `${s.region}-${i}`,
        targetUrl,
        token,
        signingKey: ctx.signingKey,
        ...(s.variant.window === null ? {} : { window: s.variant.window }),
        expect: s.events
      }, `wan-${s.topology}-${s.rttMs}-${s.variant.instances}${s.variant.window === null ? '' : `-w${s.variant.window}`}-${i}`)
      reps.push(rep)
      children.push(rep)
    }
    await Promise.all(reps.map(async (r) => await r.next('ready', 120_000)))
    const done = await waitForTarget(ctx, target.child, s.events, s.timeBoxMs, true)
    const stats = await Promise.all(reps.map(async (r) => await r.ask<Message & { applied: number }>({ type: 'stats' }, 'stats')))
    const seconds = (done.lastMs - done.firstMs) / 1000
    return {
      topology: s.topology,
      rttMs: s.rttMs,
      ...s.variant,
      events: done.count,
      seconds: round(seconds, 2),
      eventsPerSec: round(done.firstMs < 0 || seconds <= 0 ? 0 : done.count / seconds, 0),
      vsZero: null,
      timeBoxed: done.partial,
      non2xx: done.non2xx,
      perInstance: stats.map((x) => x.applied)
    }
  } finally {
    await stopAll(children)
    for (const p of proxies) await p.close()
  }
}
