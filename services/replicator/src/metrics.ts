import { Counter, Gauge, Histogram, Registry } from 'prom-client'
import type { RegionLag } from '@regionsync/shared'
import { DEAD_LETTER_REASONS } from './dead-letter.js'

const SECONDS_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300]

export interface ReplicatorMetrics {
  registry: Registry
  applied: Counter<'region'>
  skipped: Counter<'region' | 'reason'>
  retries: Counter<'region'>
  deadLetters: Counter<'region' | 'reason'>
  applySeconds: Histogram<'region'>
  endToEndSeconds: Histogram<'region'>
  breakerOpen: Gauge<'region'>
  /** Replayed creates whose target answered another id than the source's (learnt, then translated). */
  idsRemapped: Counter<'region'>
}

/**
 * The replicator's metrics (names from DESIGN.md). Lag and pending are read from JetStream at
 * scrape time through `lag`, so they are exact and need no bookkeeping on the hot path.
 */
export function createReplicatorMetrics (region: string, lag: () => Promise<RegionLag>, registry = new Registry()): ReplicatorMetrics {
  const registers = [registry]
  new Gauge({
    name: 'regionsync_lag_seconds',
    help: 'Age of the oldest event not yet applied in the region, 0 when caught up',
    labelNames: ['region'],
    registers,
    async collect () { this.set({ region }, (await lag()).lagSeconds) }
  })
  new Gauge({
    name: 'regionsync_pending_events',
    help: 'Events not yet applied in the region (waiting plus in flight)',
    labelNames: ['region'],
    registers,
    async collect () { this.set({ region }, (await lag()).pending) }
  })
  const m: ReplicatorMetrics = {
    registry,
    applied: new Counter({ name: 'regionsync_events_applied_total', help: 'Events applied to the target (including ones the target already had)', labelNames: ['region'], registers }),
    skipped: new Counter({ name: 'regionsync_events_skipped_total', help: 'Events acknowledged without applying them: own origin, already applied, or superseded (the target has a newer event of the resource)', labelNames: ['region', 'reason'], registers }),
    retries: new Counter({ name: 'regionsync_apply_retries_total', help: 'Replays that failed transiently and were scheduled again', labelNames: ['region'], registers }),
    deadLetters: new Counter({ name: 'regionsync_dead_letters_total', help: 'Events dead-lettered, by reason', labelNames: ['region', 'reason'], registers }),
    applySeconds: new Histogram({ name: 'regionsync_apply_duration_seconds', help: 'Duration of one replay request to the target', labelNames: ['region'], buckets: SECONDS_BUCKETS, registers }),
    endToEndSeconds: new Histogram({ name: 'regionsync_end_to_end_seconds', help: "From the source's commit to the target's 2xx", labelNames: ['region'], buckets: SECONDS_BUCKETS, registers }),
    breakerOpen: new Gauge({ name: 'regionsync_breaker_open', help: '1 while replays to the target are stopped because it is down (open or probing), else 0', labelNames: ['region'], registers }),
    idsRemapped: new Counter({ name: 'regionsync_ids_remapped_total', help: "Replayed creates the target gave another id than the source's; later paths naming them are rewritten", labelNames: ['region'], registers })
  }
  // Every series exists from the start at 0, so rate() and increase() see the first event too.
  m.applied.inc({ region }, 0)
  m.retries.inc({ region }, 0)
  m.idsRemapped.inc({ region }, 0)
  for (const reason of DEAD_LETTER_REASONS) m.deadLetters.inc({ region, reason }, 0)
  for (const reason of ['own-origin', 'already-applied', 'superseded']) m.skipped.inc({ region, reason }, 0)
  return m
}
