import type { StoredDeadLetter } from '@regionsync/replicator'
import { expect } from 'vitest'
import type { CheckReport } from './checker.js'
import { scanForSecrets } from './scan.js'
import { recordRow, rowOf } from './summary.js'
import type { FaultSystem } from './system.js'
import type { Workload } from './workload.js'

export const sleep = async (ms: number): Promise<void> => await new Promise((resolve) => setTimeout(resolve, ms))

/** The end-user and region credentials of a system, none of which may be stored by NATS in clear. */
export function secretsOf (system: FaultSystem): string[] {
  const c = system.credentials
  return [c.bearer, c.xAuthToken, c.cookie, c.cookie.slice(c.cookie.indexOf('=') + 1), ...system.regions.map((r) => r.token)]
}

/** A fault run under way: its system, the client's writes, and when it began (for the summary row). */
export interface LoadedRun {
  system: FaultSystem
  load: Workload
  startedAt: number
}

export interface VerifyOptions {
  order: number
  fault: string
  startedAt: number
  /** Extra words for the table's notes column. */
  notes?: (report: CheckReport) => string
  /** False for a run with no fault that ends (its recovery column is "-"). */
  hasFault?: boolean
  /** Checks the dead letters, for a run that expects some; by default there must be none. */
  deadLetters?: (letters: StoredDeadLetter[]) => void
}

/**
 * The end of every fault run: waits for the regions to converge, checks them against the client's
 * view, scans every stored message (and the replicators' logs) for credentials, records the
 * summary row, then asserts: nothing lost, nothing applied twice, no order violated, every region
 * equal to the source, no dead letter, no credential in clear.
 */
export async function verifyRun (system: FaultSystem, o: VerifyOptions): Promise<CheckReport> {
  let convergeError: Error | null = null
  let convergeMs = 0
  try {
    convergeMs = await system.waitForRegions()
  } catch (err) {
    convergeError = err as Error
  }
  const report = await system.check()
  const letters = await system.deadLetters()
  const scan = await scanForSecrets(system.jsm, system.n, secretsOf(system), { 'replicator logs': system.replicatorOutput })
  const notes = [
    o.notes?.(report),
    report.unacknowledged > 0 ? `${report.unacknowledged} writes got no answer (applied: ${report.regions.map((r) => `${r.region} ${r.unacknowledgedApplied}`).join(', ')})` : undefined,
    `caught up ${(convergeMs / 1000).toFixed(1)} s after the last write`
  ].filter((x) => x !== undefined && x !== '').join('; ')
  recordRow(rowOf(o.order, o.fault, report, o.startedAt, notes, o.hasFault ?? true))
  const summary = `${o.fault}: ${report.acknowledged} acknowledged, applied ${report.regions.map((r) => `${r.region} ${r.applied}`).join(', ')}, ` +
    `lost ${report.lost}, duplicated ${report.duplicated}, order violations ${report.orderViolations}, recovery ${(report.recoveryMs / 1000).toFixed(1)} s; ${notes}`
  console.info([summary, ...report.regions.flatMap((r) => r.recoveryBy.map((b) => `  ${r.region} ${b}`))].join('\n'))
  const why = `${summary}\n${report.problems.join('\n')}`
  if (convergeError !== null) throw new Error(`${convergeError.message}\n${why}`)
  expect(report.acknowledged, why).toBeGreaterThan(0)
  expect(report.lost, why).toBe(0)
  expect(report.duplicated, why).toBe(0)
  expect(report.orderViolations, why).toBe(0)
  expect(report.foreign, why).toBe(0)
  expect(report.stateMismatches, why).toBe(0)
  expect(report.sourceMismatches, why).toBe(0)
  expect(report.allEqual, why).toBe(true)
  for (const r of report.regions) {
    expect(r.applied, `${r.region}: ${why}`).toBe(report.acknowledged)
    // The plugin's own count of replays it ran agrees with the log: every one ran once.
    expect(await system.region(r.region).api.pluginApplied(), `${r.region} plugin count`).toBe(r.applied + r.unacknowledgedApplied)
  }
  expect(Number.isFinite(report.recoveryMs), why).toBe(true)
  if (o.deadLetters !== undefined) o.deadLetters(letters)
  else expect(letters.map((l) => `${l.region} ${l.reason} ${l.detail}`), 'dead letters').toEqual([])
  expect(scan.found, 'credentials found in clear').toEqual([])
  return report
}

/** A run's end: the writes go on for `settleMs` after the last fault, stop, and the run is verified. */
export async function endRun (run: LoadedRun, settleMs: number, o: Omit<VerifyOptions, 'startedAt'>): Promise<CheckReport> {
  await sleep(settleMs)
  await run.load.stop()
  return await verifyRun(run.system, { ...o, startedAt: run.startedAt })
}

/** No replicator ended by itself during the run. */
export function expectReplicatorsRunning (system: FaultSystem): void {
  for (const r of system.regions) for (const p of r.replicators) expect(p.running, `${p.label} still running`).toBe(true)
}
