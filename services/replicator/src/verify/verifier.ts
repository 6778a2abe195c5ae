import type { JetStreamManager } from '@nats-io/jetstream'
import { partitionOf, walkSubject, type Logger, type Names } from '@regionsync/shared'
import { Semaphore } from '../semaphore.js'
import { fillTemplate, type TypeConfig, type VerifyConfig } from './config.js'
import { mergeSorted } from './merge.js'
import { canonicalJson, firstDifference, hashOf, omit } from './normalise.js'
import { lastStreamSeq, startPositions, waitApplied, type RegionPosition } from './positions.js'
import { RegionReader, compareIds } from './region-reader.js'
import { publishRepair, type RepairContext, type RepairOutcome } from './repair.js'

/** Rounds of a recheck before a resource the source keeps changing is given up on as unsettled. */
const MAX_RECHECK_ROUNDS = 5
/** Events between two sequences a recheck reads to learn whether one was the resource's; past this it assumes so. */
const MAX_EVENTS_SCANNED = 2000

export type DifferenceKind = 'missing' | 'extra' | 'different'

/**
 * How far a difference was proven: `confirmed` (still there after the region applied every event
 * the stream held when it was rechecked), `unconfirmed` (the region did not catch up within the
 * settle timeout, or no replicator ever ran for it), `unsettled` (the source kept changing the
 * resource through every recheck), `not-rechecked` (verify ran without NATS).
 */
export type Proof = 'confirmed' | 'unconfirmed' | 'unsettled' | 'not-rechecked'

export interface Difference {
  type: string
  region: string
  id: string
  kind: DifferenceKind
  /** First field that differs (dotted path), for `different`. */
  field: string | null
  proof: Proof
}

export interface RegionCounts {
  region: string
  /** Resources of the type the region listed. */
  listed: number
  missing: number
  extra: number
  different: number
  /** Differences found past `maxDifferences`: counted, neither listed nor rechecked. */
  beyondLimit: number
}

export interface TypeReport {
  type: string
  /** Resources the source listed. */
  resources: number
  /** Per target region. */
  regions: RegionCounts[]
  /** Differences seen while comparing that had gone once the region caught up (lag, not divergence). */
  settled: number
}

export interface VerifyReport {
  startedAt: string
  finishedAt: string
  durationMs: number
  source: string
  /** Each region's replication position when verify began; empty without NATS. */
  positions: RegionPosition[]
  types: TypeReport[]
  /** Every difference reported (at most `maxDifferences` per type), in id order per type. */
  differences: Difference[]
  repairs: RepairOutcome[]
  /** GET requests sent, per region. */
  requests: Record<string, number>
  /** True when every region matched the source on every type. */
  clean: boolean
}

export interface VerifyProgress {
  type: string
  /** Ids compared so far in this type (the union over regions). */
  compared: number
  differences: number
}

/** What verify needs from NATS: positions and rechecks (and, with `repair`, publishing). */
export interface VerifyNats {
  jsm: JetStreamManager
  names: Names
  partitions: number
  /** Present when repairs may be published. */
  repair?: RepairContext
}

export interface VerifyRunOptions {
  config: VerifyConfig
  /** Without it differences are reported as found, not rechecked (`not-rechecked`). */
  nats: VerifyNats | null
  /** Publish repairs for the differences found. */
  repair: boolean
  /** With `repair`: say what would be published, publish nothing. */
  dryRun: boolean
  /** Resources repaired at most in this run. */
  maxRepairs: number
  logger: Logger
  onProgress?: (p: VerifyProgress) => void
  /** Only these types; all when undefined. */
  types?: string[]
}

/**
 * One verify: for each type, a sorted streaming merge of every region's collection (one page per
 * region in memory, whatever the number of resources), each resource's normalised representation
 * hashed and compared with the source's; then each difference is rechecked once its region has
 * applied what the stream holds, so lag is never reported as divergence; then, when asked, one
 * repair per divergent resource through the stream.
 */
export async function runVerify (o: VerifyRunOptions): Promise<VerifyReport> {
  const started = new Date()
  const { config } = o
  const budget = { semaphore: new Semaphore(config.concurrency) }
  const readers = config.regions.map((r) => new RegionReader(r, config.maxRps, budget))
  try {
    const positions = o.nats === null ? [] : await startPositions(o.nats.jsm, o.nats.names, config.regions.slice(1).map((r) => r.name), o.nats.partitions)
    const types: TypeReport[] = []
    const differences: Difference[] = []
    const repairs: RepairOutcome[] = []
    for (const type of config.types) {
      if (o.types !== undefined && !o.types.includes(type.name)) continue
      const found = await compareType(type, readers, config, o.onProgress)
      const kept = o.nats === null
        ? found.candidates.map((c) => ({ ...c, proof: 'not-rechecked' as const }))
        : await recheck(type, readers, found.candidates, o.nats, config)
      const report: TypeReport = {
        type: type.name,
        resources: found.resources,
        settled: found.candidates.length - kept.length,
        regions: readers.slice(1).map((r, i) => ({
          region: r.region.name,
          listed: found.listed[i + 1] ?? 0,
          missing: kept.filter((d) => d.region === r.region.name && d.kind === 'missing').length,
          extra: kept.filter((d) => d.region === r.region.name && d.kind === 'extra').length,
          different: kept.filter((d) => d.region === r.region.name && d.kind === 'different').length,
          beyondLimit: found.beyondLimit[i + 1] ?? 0
        }))
      }
      types.push(report)
      differences.push(...kept)
      o.logger.info({ type: type.name, resources: report.resources, differences: kept.length, settled: report.settled }, 'verify compared a type')
      if (o.repair && o.nats?.repair !== undefined) {
        const ids = [...new Set(kept.map((d) => d.id))]
        for (const id of ids) {
          if (repairs.length >= o.maxRepairs) break
          const outcome = await publishRepair(o.nats.repair, type, id, async () => await (readers[0] as RegionReader).getItem(type, fillTemplate(type.item.path, id)), o.dryRun)
          o.logger.info({ type: type.name, id, method: outcome.method, outcome: outcome.outcome, seq: outcome.seq, eventId: outcome.eventId }, 'verify repair')
          repairs.push(outcome)
        }
      }
    }
    const finished = new Date()
    return {
      startedAt: started.toISOString(),
      finishedAt: finished.toISOString(),
      durationMs: finished.getTime() - started.getTime(),
      source: config.source,
      positions,
      types,
      differences,
      repairs,
      requests: Object.fromEntries(readers.map((r) => [r.region.name, r.requests])),
      clean: differences.length === 0 && types.every((t) => t.regions.every((r) => r.beyondLimit === 0))
    }
  } finally {
    await Promise.all(readers.map(async (r) => await r.close()))
  }
}

interface Candidate { type: string, region: string, id: string, kind: DifferenceKind, field: string | null }

interface Comparison {
  resources: number
  /** Per region (source first): resources listed. */
  listed: number[]
  /** Per region (source first): differences past the limit. */
  beyondLimit: number[]
  candidates: Candidate[]
}

async function compareType (type: TypeConfig, readers: RegionReader[], config: VerifyConfig, onProgress?: (p: VerifyProgress) => void): Promise<Comparison> {
  const lists = readers.map((r) => r.list(type, config.pageSize))
  const listed = readers.map(() => 0)
  const beyondLimit = readers.map(() => 0)
  const candidates: Candidate[] = []
  let compared = 0
  let found = 0
  const add = (c: Candidate, i: number): void => {
    found++
    if (candidates.length < config.maxDifferences) candidates.push(c)
    else beyondLimit[i] = (beyondLimit[i] ?? 0) + 1
  }
  try {
    for await (const row of mergeSorted(lists, (a, b) => compareIds(type, a, b))) {
      const [src, ...targets] = row.values
      const srcHash = src === undefined ? null : hashOf(canonicalJson(src.value, type.ignore))
      if (src !== undefined) listed[0] = (listed[0] ?? 0) + 1
      targets.forEach((t, j) => {
        const i = j + 1
        const region = (readers[i] as RegionReader).region.name
        if (t !== undefined) listed[i] = (listed[i] ?? 0) + 1
        if (src === undefined && t === undefined) return
        if (t === undefined) { add({ type: type.name, region, id: row.id, kind: 'missing', field: null }, i); return }
        if (src === undefined) { add({ type: type.name, region, id: row.id, kind: 'extra', field: null }, i); return }
        if (hashOf(canonicalJson(t.value, type.ignore)) === srcHash) return
        add({ type: type.name, region, id: row.id, kind: 'different', field: firstDifference(omit(src.value, type.ignore), omit(t.value, type.ignore)) }, i)
      })
      compared++
      if (onProgress !== undefined && compared % 500 === 0) onProgress({ type: type.name, compared, differences: found })
    }
  } finally {
    // A failed read ends the comparison; the other regions' readers stop with it.
    await Promise.all(lists.map(async (l) => await l.return(undefined)))
  }
  onProgress?.({ type: type.name, compared, differences: found })
  return { resources: listed[0] ?? 0, listed, beyondLimit, candidates }
}

/**
 * Rechecks each difference once its region has caught up: reads the source, waits until the region
 * has applied every event the stream holds by then, reads the region, reads the source again. Kept
 * only if it still differs and the source did not change it meanwhile (neither in its reads nor by
 * an event on the stream); a resource the source keeps changing is retried, then kept as
 * `unsettled`.
 */
async function recheck (type: TypeConfig, readers: RegionReader[], candidates: Candidate[], nats: VerifyNats, config: VerifyConfig): Promise<Difference[]> {
  const byId = new Map<string, Candidate[]>()
  for (const c of candidates) byId.set(c.id, [...(byId.get(c.id) ?? []), c])
  const source = readers[0] as RegionReader
  const readerOf = new Map(readers.map((r) => [r.region.name, r]))
  const out: Difference[] = []
  const pool = new Semaphore(config.concurrency)
  await Promise.all([...byId].map(async ([id, cs]) => {
    const release = await pool.acquire()
    try {
      const itemPath = fillTemplate(type.item.path, id)
      const key = fillTemplate(type.resourceKey, id)
      const partition = partitionOf(key, nats.partitions)
      for (let round = 1; ; round++) {
        const before = await source.getItem(type, itemPath)
        const upTo = await lastStreamSeq(nats.jsm, nats.names)
        const caughtUp = new Map(await Promise.all(cs.map(async (c) =>
          [c.region, await waitApplied(nats.jsm, nats.names, c.region, partition, upTo, config.settleTimeoutMs)] as const)))
        const seen = new Map(await Promise.all(cs.map(async (c) => [c.region, await (readerOf.get(c.region) as RegionReader).getItem(type, itemPath)] as const)))
        const after = await source.getItem(type, itemPath)
        const now = await lastStreamSeq(nats.jsm, nats.names)
        const stable = same(before, after, type) && !(await touched(nats, partition, upTo + 1, now, key))
        if (!stable && round < MAX_RECHECK_ROUNDS) continue
        for (const c of cs) {
          const d = judge(type, c.region, id, after, seen.get(c.region))
          if (d === null) continue
          out.push({ ...d, proof: !stable ? 'unsettled' : caughtUp.get(c.region) === true ? 'confirmed' : 'unconfirmed' })
        }
        return
      }
    } finally {
      release()
    }
  }))
  return out.sort((a, b) => compareIds(type, a.id, b.id) || a.region.localeCompare(b.region))
}

function same (a: unknown, b: unknown, type: TypeConfig): boolean {
  if (a === null || b === null) return a === b
  return canonicalJson(a, type.ignore) === canonicalJson(b, type.ignore)
}

function judge (type: TypeConfig, region: string, id: string, source: unknown, target: unknown): Candidate | null {
  if (source === null && target === null) return null
  if (target === null || target === undefined) return { type: type.name, region, id, kind: 'missing', field: null }
  if (source === null) return { type: type.name, region, id, kind: 'extra', field: null }
  if (same(source, target, type)) return null
  return { type: type.name, region, id, kind: 'different', field: firstDifference(omit(source, type.ignore), omit(target, type.ignore)) }
}

/** Whether an event for `resource` lies in the partition between two stream sequences (inclusive). */
async function touched (nats: VerifyNats, partition: number, from: number, to: number, resource: string): Promise<boolean> {
  let scanned = 0
  for await (const msg of walkSubject(nats.jsm, nats.names.eventStream, nats.names.partitionFilter(partition), from, to)) {
    if (scanned++ >= MAX_EVENTS_SCANNED) return true
    try {
      if (msg.json<{ resource?: unknown }>().resource === resource) return true
    } catch {
      // Not an event anyone applies; it cannot have changed the resource.
    }
  }
  return false
}
