import { jetstreamManager } from '@nats-io/jetstream'
import { NoRespondersError, RequestError, type NatsConnection } from '@nats-io/transport-node'
import { eventStreamPartitions, isNotFound, listRegions, readVerifySummaries, regionLag, type Names, type VerifySummary } from '@regionsync/shared'
import type { BreakerState } from './circuit-breaker.js'

export const DEFAULT_STATUS_WAIT_MS = 1000

/** What one replicator answers on the status subject and serves on `/status`. */
export interface ReplicatorStatus {
  region: string
  instance: string
  /** The target's origin; never its credential. */
  target: string
  connected: boolean
  ready: boolean
  partitions: number
  /** Partitions this instance owns now. */
  owned: number[]
  /** Live instances of the region, as this one sees them (itself included). */
  instances: number
  /** Events in flight per owned partition (1: one at a time). */
  window: number
  /** How ownership is decided and enforced on this server. */
  ownership: string
  pending: number
  lagSeconds: number
  oldestPendingAt: string | null
  applied: number
  /** Events applied per second over the last 10 seconds. */
  appliedPerSecond: number
  retries: number
  deadLetters: number
  /** Writes made in this region itself that this instance acknowledged without a replay, since it started. */
  ownOrigin: number
  breaker: BreakerState
  lastError: { at: string, message: string } | null
  startedAt: string
}

/** One region as `regionsync status` and the dashboard show it. */
export interface RegionStatus {
  region: string
  /** Live replicators that answered, by instance name. */
  instances: ReplicatorStatus[]
  /** From JetStream, so right even with no live instance. */
  pending: number
  lagSeconds: number
  oldestPendingAt: string | null
  appliedPerSecond: number
  deadLetters: number
  /** The worst breaker state among the instances; null with none. */
  breaker: BreakerState | null
  lastError: { at: string, message: string, instance: string } | null
  /**
   * Writes made in the region itself, acknowledged by its live instances without a replay since
   * they started (they are not pending); null with no live instance.
   */
  ownOrigin: number | null
  /** Divergent resources at the last `regionsync verify`, and when it finished; null when verify never ran for the region. */
  divergent: number | null
  verifiedAt: string | null
}

const BREAKER_RANK: Record<BreakerState, number> = { closed: 0, 'half-open': 1, open: 2 }

/**
 * Scatter-gather: every live replicator answers on the status subject within `waitMs`; lag and
 * pending come from JetStream for every region that has consumers, answered or not.
 */
export async function gatherStatus (nc: NatsConnection, n: Names, waitMs = DEFAULT_STATUS_WAIT_MS): Promise<RegionStatus[]> {
  const jsm = await jetstreamManager(nc)
  const [answers, regions, partitions, dlq, verified] = await Promise.all([
    collect(nc, n, waitMs),
    listRegions(jsm, n),
    eventStreamPartitions(jsm, n),
    deadLetterCounts(jsm, n),
    // The verify column is extra: a status without it beats no status.
    readVerifySummaries(nc, n).catch(() => new Map<string, VerifySummary>())
  ])
  const all = new Set([...regions, ...answers.map((a) => a.region)])
  return await Promise.all([...all].sort().map(async (region): Promise<RegionStatus> => {
    const instances = answers.filter((a) => a.region === region).sort((a, b) => a.instance.localeCompare(b.instance))
    const lag = await regionLag(jsm, n, region, partitions ?? 0)
    const errors = instances.flatMap((i) => i.lastError === null ? [] : [{ ...i.lastError, instance: i.instance }]).sort((a, b) => b.at.localeCompare(a.at))
    return {
      region,
      instances,
      pending: lag.pending,
      lagSeconds: lag.lagSeconds,
      oldestPendingAt: lag.oldestPendingAt?.toISOString() ?? null,
      appliedPerSecond: instances.reduce((sum, i) => sum + i.appliedPerSecond, 0),
      deadLetters: dlq.get(n.dlqSubject(region)) ?? 0,
      breaker: instances.length === 0 ? null : instances.map((i) => i.breaker).reduce((a, b) => BREAKER_RANK[b] > BREAKER_RANK[a] ? b : a),
      lastError: errors[0] ?? null,
      // An instance older than the field answers without it.
      ownOrigin: instances.length === 0 ? null : instances.reduce((sum, i) => sum + (i.ownOrigin ?? 0), 0),
      divergent: verified.get(region)?.divergent ?? null,
      verifiedAt: verified.get(region)?.checkedAt ?? null
    }
  }))
}

async function collect (nc: NatsConnection, n: Names, waitMs: number): Promise<ReplicatorStatus[]> {
  const out: ReplicatorStatus[] = []
  try {
    for await (const msg of await nc.requestMany(n.statusSubject, '', { strategy: 'timer', maxWait: waitMs })) {
      try {
        out.push(msg.json<ReplicatorStatus>())
      } catch {
        // Not a status answer; ignore it.
      }
    }
  } catch (err) {
    // No responders: no live replicator anywhere, which the table shows. Anything else (a closed
    // connection, a permission refused) is an answer status cannot give.
    if (!isNoResponders(err)) throw err
  }
  return out
}

function isNoResponders (err: unknown): boolean {
  return err instanceof NoRespondersError || (err instanceof RequestError && err.isNoResponders())
}

async function deadLetterCounts (jsm: Awaited<ReturnType<typeof jetstreamManager>>, n: Names): Promise<Map<string, number>> {
  try {
    const info = await jsm.streams.info(n.dlqStream, { subjects_filter: n.dlqSubjects })
    return new Map(Object.entries(info.state.subjects ?? {}))
  } catch (err) {
    if (isNotFound(err)) return new Map()
    throw err
  }
}

export function formatStatusTable (rows: RegionStatus[]): string[] {
  const header = ['REGION', 'INSTANCES', 'PENDING', 'LAG', 'APPLIED/S', 'DLQ', 'BREAKER', 'DIVERGENT', 'OWN WRITES', 'LAST ERROR']
  const lines = rows.map((r) => [
    r.region,
    r.instances.length === 0 ? 'none' : String(r.instances.length),
    String(r.pending),
    `${r.lagSeconds.toFixed(1)}s`,
    r.instances.length === 0 ? '-' : r.appliedPerSecond.toFixed(1),
    String(r.deadLetters),
    r.breaker ?? '-',
    r.divergent === null ? '-' : `${r.divergent} (${r.verifiedAt?.slice(0, 16).replace('T', ' ') ?? '?'})`,
    r.ownOrigin === null ? '-' : String(r.ownOrigin),
    r.lastError === null ? '-' : `${r.lastError.message.slice(0, 60)} (${r.lastError.instance})`
  ])
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => (l[i] as string).length)))
  return [header, ...lines].map((cols) => cols.map((c, i) => c.padEnd(widths[i] as number)).join('  ').trimEnd())
}
