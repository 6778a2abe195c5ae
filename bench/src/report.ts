import type { Conditions } from './conditions.js'
import type { IngressResult, IngressVariantName } from './ingress.js'
import type { LagResult } from './lag.js'
import { FLAT_RATIO, RSS_LIMIT_MB, type MemoryResult } from './memory.js'
import type { ProfileSummary } from './profile-summary.js'
import type { ReplicationResult, ReplicationRun } from './replication.js'
import { SCALING_TARGET, type ScalingResult } from './scaling.js'
import { VERIFY_FLAT_RATIO, type VerifyResult } from './verify.js'
import { WAN_JUDGED_RTT_MS, WAN_TARGET, type WanResult } from './wan.js'

export interface Sections {
  ingress?: IngressResult
  replication?: ReplicationResult
  lag?: LagResult
  memory?: MemoryResult
  scaling?: ScalingResult
  wan?: WanResult
  verify?: VerifyResult
}

export interface Target {
  id: string
  what: string
  target: string
  measured: string
  met: boolean
}

export interface BenchResults {
  version: 1
  quick: boolean
  /** Targets are reported but not asserted in quick mode: the sizes are too small to mean much. */
  asserted: boolean
  conditions: Conditions
  durationSeconds: number
  sections: Sections
  errors: Record<string, string>
  targets: Target[]
  profiles: ProfileSummary[]
}

export function evaluateTargets (s: Sections): Target[] {
  const t: Target[] = []
  if (s.ingress !== undefined) {
    t.push({ id: '1-throughput', what: 'ingress throughput with the plugin / without', target: '>= 0.85', measured: s.ingress.throughputRatio.toFixed(2), met: s.ingress.throughputRatio >= 0.85 })
    t.push({ id: '1-p99', what: 'ingress p99 added by the plugin (same connections)', target: '<= 2 ms', measured: `${s.ingress.p99AddedMs.toFixed(2)} ms`, met: s.ingress.p99AddedMs <= 2 })
    t.push({ id: '1-p99-fixed-rate', what: `ingress p99 added at a fixed ${s.ingress.fixedRate.rate}/s (open loop)`, target: '<= 2 ms', measured: `${s.ingress.fixedRate.p99AddedMs.toFixed(2)} ms`, met: s.ingress.fixedRate.p99AddedMs <= 2 })
  }
  if (s.replication !== undefined) {
    t.push({ id: '2-raw', what: 'replication throughput / raw undici to the same target', target: '>= 0.80', measured: s.replication.vsRaw.toFixed(2), met: s.replication.vsRaw >= 0.8 })
    t.push({ id: '2-raw-plugin', what: 'replication throughput / raw undici, target with the plugin', target: '>= 0.50', measured: s.replication.vsRawWithPlugin.toFixed(2), met: s.replication.vsRawWithPlugin >= 0.5 })
    t.push({ id: '2-baseline', what: 'replication throughput / hand-written baseline', target: '> 1', measured: s.replication.vsBaseline.toFixed(2), met: s.replication.vsBaseline > 1 })
  }
  if (s.lag !== undefined) {
    // Judged at the highest rate run (50% of capacity unless --lag-rate); the others are context.
    for (const [i, run] of s.lag.runs.entries()) {
      const judged = i === s.lag.runs.length - 1
      t.push({
        id: judged ? '3-p99' : `3-p99-${run.offeredRate}`,
        what: `end-to-end lag p99 at ${run.offeredRate}/s${run.share === null ? '' : ` (${run.share * 100}% of capacity)`}, worst region${judged ? '' : ' (context)'}`,
        target: '< 50 ms',
        measured: `${run.worstP99Ms.toFixed(1)} ms`,
        met: run.worstP99Ms < 50
      })
    }
  }
  if (s.memory !== undefined) {
    const large = s.memory.runs[s.memory.runs.length - 1]
    t.push({ id: '4-limit', what: `replicator peak RSS with ${large?.backlog.toLocaleString('en-US')} waiting`, target: `< ${RSS_LIMIT_MB} MB`, measured: `${large?.peakRssMB} MB`, met: (large?.peakRssMB ?? Infinity) < RSS_LIMIT_MB })
    const retained = s.memory.retainedRatio
    t.push({ id: '4-flat', what: 'heap retained after a full GC, large backlog / small', target: `<= ${FLAT_RATIO}`, measured: retained === null ? '-' : retained.toFixed(2), met: retained !== null && retained <= FLAT_RATIO })
  }
  if (s.scaling !== undefined) {
    const k = s.scaling.conditions
    t.push({ id: '5-scaling', what: `2 instances / 1 on a ${k.targetDelayMs} ms target, the defaults, ${k.cpuQuotaCores === null ? 'no CPU budget (cgroups unavailable)' : `${k.cpuQuotaCores} CPU per instance`}`, target: `>= ${SCALING_TARGET}`, measured: s.scaling.ratio.toFixed(2), met: s.scaling.ratio >= SCALING_TARGET })
  }
  if (s.wan !== undefined) {
    for (const [id, where, ratio] of [['6-wan-nats', 'NATS', s.wan.natsFarRatio], ['6-wan-target', 'the target', s.wan.targetFarRatio]] as const) {
      t.push({
        id,
        what: `WAN: 2 instances with ${where} ${WAN_JUDGED_RTT_MS} ms away / over loopback (target with the plugin)`,
        target: `>= ${WAN_TARGET}`,
        measured: ratio === null ? '-' : ratio.toFixed(2),
        met: ratio !== null && ratio >= WAN_TARGET
      })
    }
  }
  if (s.verify !== undefined) {
    const last = s.verify.runs[s.verify.runs.length - 1]
    t.push({ id: '7-memory', what: `verify peak live heap, ${last?.resources.toLocaleString('en-US') ?? '-'} users / ${s.verify.runs[0]?.resources.toLocaleString('en-US') ?? '-'}`, target: `<= ${VERIFY_FLAT_RATIO}`, measured: s.verify.liveHeapRatio.toFixed(2), met: s.verify.liveHeapRatio <= VERIFY_FLAT_RATIO })
    t.push({ id: '7-found', what: 'verify found exactly the planted differences', target: 'all runs', measured: s.verify.runs.map((x) => `${x.found}/${x.planted}`).join(', '), met: s.verify.runs.every((x) => x.found === x.planted) })
  }
  return t
}

function table (headers: string[], rows: Array<Array<string | number>>): string[] {
  const cells = rows.map((r) => r.map(String))
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((r) => (r[i] ?? '').length)))
  const line = (cols: string[]): string => '  ' + cols.map((c, i) => i === 0 ? c.padEnd(widths[i] as number) : c.padStart(widths[i] as number)).join('   ')
  return [line(headers), line(widths.map((w) => '-'.repeat(w))), ...cells.map(line)]
}

const n0 = (n: number): string => Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : '-'
const n1 = (n: number): string => Number.isFinite(n) ? n.toFixed(1) : '-'
const n2 = (n: number): string => Number.isFinite(n) ? n.toFixed(2) : '-'

export function formatResults (r: BenchResults): string[] {
  const c = r.conditions
  const s = r.sections
  const out: string[] = []
  out.push(`regionsync bench${r.quick ? ' --quick (smoke sizes; targets not asserted)' : ''}, ${c.date.slice(0, 10)}, ${Math.round(r.durationSeconds)} s`)
  out.push(`machine: ${c.machine.cores} cores (${c.machine.cpu}), ${c.machine.memoryGB} GB, ${c.machine.os}; Node ${c.node}; nats-server ${c.natsServer}; git ${c.git.commit}${c.git.uncommittedFiles > 0 ? ` + ${c.git.uncommittedFiles} uncommitted files` : ''}`)
  out.push(`packages: ${Object.entries(c.packages).map(([k, v]) => `${k} ${v}`).join(', ')}; ${c.partitions} partitions`)
  if (s.ingress !== undefined) {
    const i = s.ingress
    out.push('', `1. Ingress: ${i.conditions.request}, body ${i.conditions.bodyBytes} B, ${i.conditions.connections} connections, ${i.conditions.durationSeconds} s each after ${i.conditions.warmupSeconds} s warm-up`)
    const base = i.variants.find((v) => v.name === 'without-plugin')
    const us = (v: number | null): string => v === null ? '-' : String(v)
    out.push(...table(['variant', 'req/s', 'ratio', 'p50 ms', 'p90 ms', 'p99 ms', 'max ms', 'non-2xx', 'spooled', 'CPU us/req: api', 'nats', 'autocannon', 'other procs (cores)'], i.variants.map((v) => [
      v.name, n0(v.requestsPerSec), n2(v.requestsPerSec / (base?.requestsPerSec ?? NaN)), n2(v.p50Ms), n2(v.p90Ms), n2(v.p99Ms), n1(v.maxMs), v.non2xx + v.errors, v.spooled ?? '-',
      us(v.cpuUsPerRequest.api), us(v.cpuUsPerRequest.nats), us(v.cpuUsPerRequest.loadGenerator), v.otherCores === null ? '-' : n2(v.otherCores)
    ])))
    const ack = i.variants.find((v) => v.name === 'with-plugin')?.ackMs
    if (ack !== null && ack !== undefined) out.push(`   JetStream ack time (the publisher's histogram, bucket bounds): p50 <= ${ack.p50 ?? '-'} ms, p99 <= ${ack.p99 ?? '-'} ms`)
    // The cost a write pays whatever the handler does: with a handler that spends a millisecond on
    // a database, this is what the ratio above becomes small against.
    const added = (v: IngressVariantName, k: 'api' | 'nats'): string => {
      const a = i.variants.find((x) => x.name === v)?.cpuUsPerRequest[k]
      const b = base?.cpuUsPerRequest[k]
      return a === null || a === undefined || b === null || b === undefined ? '-' : `+${a - b} us`
    }
    out.push(`   CPU the plugin adds per write: API ${added('with-plugin', 'api')}, nats-server ${added('with-plugin', 'nats')}; while spooling, API ${added('spooling', 'api')}`)
    const f = i.fixedRate
    out.push(`   at a fixed ${f.rate} writes/s (open loop, ${f.durationSeconds} s; latency from each request's due time):`)
    out.push(...table(['variant', 'req/s', 'p50 ms', 'p90 ms', 'p99 ms', 'max ms', 'non-2xx', 'ack p50/p99 ms', 'other procs (cores)'], [['without-plugin', f.withoutPlugin], ['with-plugin', f.withPlugin]].map(([name, o]) => {
      const r = o as typeof f.withPlugin
      return [name as string, n0(r.achievedRate), n2(r.p50Ms), n2(r.p90Ms), n2(r.p99Ms), n1(r.maxMs), r.non2xx + r.notSent,
        r.ackMs === null ? '-' : `<=${r.ackMs.p50 ?? '-'} / <=${r.ackMs.p99 ?? '-'}`, r.otherCores === null ? '-' : n2(r.otherCores)]
    })))
  }
  if (s.replication !== undefined) {
    const p = s.replication
    const b = p.conditions.backlog
    out.push('', `2. Replication: backlog ${b.events.toLocaleString('en-US')} events (body ${b.bodyBytes} B, event ${b.eventBytes} B, published in ${b.publishSeconds.toFixed(1)} s), ${p.conditions.concurrency} in flight, target = example API`)
    // "vs raw": to raw undici at the same target, in the same pair.
    const raw = (r: ReplicationRun): number => p.runs.find((x) => x.mode === 'raw' && x.targetPlugin === r.targetPlugin && x.pair === r.pair)?.eventsPerSec ?? NaN
    const us = (v: number | null): string => v === null ? '-' : String(v)
    out.push(...table(['client', 'target', 'pair', 'events/s', 'vs raw', 'seconds', 'non-2xx', 'client RSS MB', 'CPU us/event: client', 'target', 'nats', 'other procs (cores)'], p.runs.map((x) => [
      x.mode, x.targetPlugin ? 'with plugin' : 'without', x.pair ?? '-', n0(x.eventsPerSec), n2(x.eventsPerSec / raw(x)), n2(x.seconds), x.non2xx, n1(x.peakRssMB),
      us(x.cpuUsPerEvent.client), us(x.cpuUsPerEvent.target), us(x.cpuUsPerEvent.nats), x.otherCores === null ? '-' : n2(x.otherCores)
    ])))
    out.push(`   replicator / raw, target with the plugin, pair by pair: ${p.pluginPairRatios.map(n2).join(', ')}; judged on the median, ${n2(p.vsRawWithPlugin)}`)
  }
  if (s.lag !== undefined) {
    const l = s.lag
    out.push('', `3. End-to-end lag: open loop at ${l.runs.map((x) => `${x.offeredRate}`).join(' then ')} writes/s (${l.conditions.rateBasis}), ${l.conditions.durationSeconds} s each after a warm-up, ${l.conditions.regions.length} regions, ${l.conditions.replicatorsPerRegion} replicator each, one deployment`)
    for (const run of l.runs) {
      out.push(`   ${run.offeredRate} writes/s${run.share === null ? '' : ` (${run.share * 100}% of capacity)`}, after ${run.warmupSeconds} s warm-up; source: ${run.source.ok} writes 2xx, ${run.source.non2xx} non-2xx, ${run.source.notSent} not sent; write latency p50 ${n2(run.source.p50Ms)} ms, p99 ${n2(run.source.p99Ms)} ms`)
      out.push(...table(['region', 'events', 'p50 ms', 'p90 ms', 'p99 ms', 'max ms'], run.regions.map((x) => [x.region, x.events, n1(x.p50Ms), n1(x.p90Ms), n1(x.p99Ms), n1(x.maxMs)])))
      for (const x of run.regions) out.push(`   ${x.region}: worst lag per second of commit time, ms: ${x.maxBySecondMs.join(' ')}`)
      out.push(`   CPU during the load, cores: ${Object.entries(run.cores).map(([k, v]) => `${k} ${v === null ? '-' : n2(v)}`).join(', ')}`)
    }
  }
  if (s.memory !== undefined) {
    const m = s.memory
    out.push('', `4. Replicator memory: backlog on the stream before the replicator starts, drained to a stub target (body ${m.conditions.bodyBytes} B, event ${m.conditions.eventBytes} B), ${m.conditions.concurrency} in flight`)
    out.push(...table(['backlog', 'applied', 'still waiting', 'peak RSS MB', 'mean RSS MB', 'peak heap MB', 'heap after GC MB', 'seconds', 'events/s', 'CPU us/event', 'other procs (cores)'], m.runs.map((x) => [
      x.backlog.toLocaleString('en-US'), x.applied.toLocaleString('en-US'), x.waitingAtEnd.toLocaleString('en-US'), n1(x.peakRssMB), n1(x.meanRssMB), n1(x.peakHeapMB),
      x.retainedHeapMB === null ? '-' : n1(x.retainedHeapMB), n2(x.drainSeconds), n0(x.eventsPerSec),
      x.cpuUsPerEvent ?? '-', x.otherCores === null ? '-' : n2(x.otherCores)
    ])))
    if (m.runs.some((x) => x.waitingAtEnd > 0)) out.push(`   (a drain still running after ${m.conditions.drainLimitSeconds} s is stopped there, to keep the suite within its time budget)`)
    out.push(`   peak RSS, large / small backlog: ${n2(m.ratio)} (context: RSS also follows when V8 collects; flatness is judged on the heap retained after a full GC)`)
    for (const x of m.runs) out.push(`   RSS MB over the drain of ${x.backlog.toLocaleString('en-US')} (${x.rssTimelineMB.length} points): ${x.rssTimelineMB.join(' ')}`)
  }
  if (s.scaling !== undefined) {
    const k = s.scaling
    const c = k.conditions
    out.push('', `5. Scaling: ${c.events.toLocaleString('en-US')} events to a target answering in ${c.targetDelayMs} ms, one region, 1 then 2 instances, the defaults (${c.partitions} partitions), ` +
      (c.cpuQuotaCores === null ? `no CPU budget per instance (${c.unconstrainedBecause ?? 'unavailable'}): the instances share the machine` : `each instance with its own CPU budget of ${c.cpuQuotaCores} CPU (a cgroup quota, as a pod's CPU limit)`))
    out.push(`   events/s counted once ${Math.round(c.warmUpShare * 100)}% of the backlog is applied (each instance compiling its hot code, the partitions being shared out: before it); whole run beside it`)
    out.push(...table(['pair', 'instances', 'events/s', 'whole run', 'ratio', 'seconds', 'applied per instance', 'CPU us/event', 'other procs (cores)'], k.runs.map((x, i) => [
      Math.floor(i / 2) + 1, x.instances, n0(x.eventsPerSec), n0(x.wholeRunEventsPerSec), n2(x.eventsPerSec / (k.runs[i - (i % 2)]?.eventsPerSec ?? NaN)), n2(x.seconds), x.perInstance.join(' + '),
      x.cpuUsPerEvent ?? '-', x.otherCores === null ? '-' : n2(x.otherCores)
    ])))
    out.push(`   2 instances / 1, pair by pair: ${k.pairRatios.map(n2).join(', ')}; judged on the median, ${n2(k.ratio)}`)
  }
  if (s.wan !== undefined) {
    const w = s.wan
    const b = w.conditions.backlog
    out.push('', `6. WAN: region ap applies a backlog of ${b.events.toLocaleString('en-US')} events (event ${b.eventBytes} B) to the ${w.conditions.target}; a delay proxy adds half the round trip each way; each run time-boxed at ${w.conditions.timeBoxSeconds} s`)
    out.push('   nats-far: ap (its replicators and its API) is the round trip away from NATS; target-far: the replicators are beside NATS, ap\'s API is the round trip away from them and from NATS')
    const variant = (x: { instances: number, window: number | null }): string => `${x.instances} instance${x.instances > 1 ? 's' : ''}${x.window === null ? '' : `, --window ${x.window}`}`
    out.push(...table(['topology', 'round trip ms', 'replicators', 'events/s', 'vs 0 ms', 'events', 'seconds', 'non-2xx', 'applied per instance'], w.runs.map((x) => [
      x.topology, x.rttMs, variant(x), n0(x.eventsPerSec), x.vsZero === null ? '-' : n2(x.vsZero), `${x.events}${x.timeBoxed ? '' : ' (all)'}`, n2(x.seconds), x.non2xx, x.perInstance.join(' + ')
    ])))
  }
  if (s.verify !== undefined) {
    const v = s.verify
    out.push('', `7. regionsync verify: one type (users), regions ${v.conditions.regions.join(', ')}, ${v.conditions.paging} paging of ${v.conditions.pageSize}, ${v.conditions.concurrency} requests in flight, ${v.conditions.planted}; APIs and verify are separate processes on this machine`)
    out.push(...table(['users per region', 'seconds', 'users/s', 'CPU s', 'requests', 'RSS at start MB', 'peak RSS MB', 'peak heap MB', 'peak live heap MB', 'found / planted'], v.runs.map((x) => [
      x.resources.toLocaleString('en-US'), n2(x.seconds), n0(x.resourcesPerSec), n2(x.cpuSeconds), x.requests, n1(x.startRssMB), n1(x.peakRssMB), n1(x.peakHeapMB), n1(x.peakLiveHeapMB), `${x.found} / ${x.planted}`
    ])))
    out.push(`   largest / smallest run: peak live heap ${n2(v.liveHeapRatio)}, peak RSS ${n2(v.rssRatio)} (live heap: what is still in use after a full GC, sampled every second; RSS and heap in use also follow when V8 collects)`)
  }
  for (const [section, message] of Object.entries(r.errors)) out.push('', `${section}: FAILED: ${message}`)
  if (r.targets.length > 0) {
    out.push('', `Targets${r.asserted ? '' : ' (quick run: reported, not asserted)'}:`)
    out.push(...table(['', 'target', 'measured', ''], r.targets.map((t) => [t.what, t.target, t.measured, t.met ? 'met' : 'MISSED'])))
  }
  return out
}
