import { execFileSync } from 'node:child_process'
import { mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { CheckReport } from './checker.js'
import { QUICK } from './durations.js'

/*
 * One row per fault. Test files run in their own processes, so each writes its row to
 * test/output/faults/rows/; after the run, the global teardown (global-setup.ts) prints the table
 * and writes test/output/faults-summary.md and .json.
 */

export const OUTPUT_DIR = fileURLToPath(new URL('../output/', import.meta.url))
const ROWS_DIR = join(OUTPUT_DIR, 'faults', 'rows')

export interface SummaryRow {
  /** Position in the table. */
  order: number
  fault: string
  acknowledged: number
  /** Acknowledged writes applied, per region. */
  applied: Record<string, number>
  lost: number
  duplicated: number
  orderViolations: number
  /** Worst time from a fault's end until every write acknowledged before it was in every region; null where no fault ends. */
  recoverySeconds: number | null
  notes: string
  seconds: number
  quick: boolean
}

/** A row from a checker's report. */
export function rowOf (order: number, fault: string, report: CheckReport, startedAt: number, notes: string, hasFault = true): SummaryRow {
  return {
    order,
    fault,
    acknowledged: report.acknowledged,
    applied: Object.fromEntries(report.regions.map((r) => [r.region, r.applied])),
    lost: report.lost,
    duplicated: report.duplicated,
    orderViolations: report.orderViolations,
    recoverySeconds: hasFault ? Math.round(report.recoveryMs / 100) / 10 : null,
    notes,
    seconds: Math.round((Date.now() - startedAt) / 1000),
    quick: QUICK
  }
}

export function recordRow (row: SummaryRow): void {
  mkdirSync(ROWS_DIR, { recursive: true })
  writeFileSync(join(ROWS_DIR, `${String(row.order).padStart(2, '0')}.json`), JSON.stringify(row, null, 2))
}

export function clearRows (): void {
  rmSync(ROWS_DIR, { recursive: true, force: true })
}

export function readRows (): SummaryRow[] {
  let files: string[]
  try {
    files = readdirSync(ROWS_DIR).filter((f) => f.endsWith('.json')).sort()
  } catch {
    return []
  }
  return files.map((f) => JSON.parse(readFileSync(join(ROWS_DIR, f), 'utf8')) as SummaryRow).sort((a, b) => a.order - b.order)
}

export function formatTable (rows: SummaryRow[]): string[] {
  const regions = [...new Set(rows.flatMap((r) => Object.keys(r.applied)))]
  const header = ['Fault', 'Writes acknowledged', ...regions.map((r) => `Applied ${r}`), 'Lost', 'Duplicated', 'Order violations', 'Time to recover (s)', 'Notes']
  const lines = [`| ${header.join(' | ')} |`, `| ${header.map((_, i) => i === 0 || i === header.length - 1 ? '---' : '---:').join(' | ')} |`]
  for (const r of rows) {
    const cells = [r.fault, String(r.acknowledged), ...regions.map((g) => String(r.applied[g] ?? '-')), String(r.lost), String(r.duplicated), String(r.orderViolations),
      r.recoverySeconds === null ? '-' : r.recoverySeconds.toFixed(1), r.notes]
    lines.push(`| ${cells.join(' | ')} |`)
  }
  return lines
}

/** The version of the nats-server the suite ran on (NATS_SERVER_BIN, as the helpers start it). */
function natsServerVersion (): string {
  try {
    return execFileSync(process.env.NATS_SERVER_BIN ?? 'nats-server', ['--version'], { encoding: 'utf8', timeout: 5000 }).trim().replace(/^nats-server:\s*/, '')
  } catch {
    return 'unknown'
  }
}

/** Writes test/output/faults-summary.md and .json; returns the markdown. */
export function writeSummary (rows: SummaryRow[], totalSeconds: number): string {
  mkdirSync(OUTPUT_DIR, { recursive: true })
  const mode = rows.some((r) => r.quick) ? 'quick (FAULTS_QUICK=1)' : 'full'
  const natsServer = natsServerVersion()
  const md = [
    `# regionsync fault suite: ${mode} run, ${new Date().toISOString()}, nats-server ${natsServer}`,
    '',
    ...formatTable(rows),
    '',
    `${rows.length} faults, ${totalSeconds} s in all.`,
    ''
  ].join('\n')
  writeFileSync(join(OUTPUT_DIR, 'faults-summary.md'), md)
  writeFileSync(join(OUTPUT_DIR, 'faults-summary.json'), JSON.stringify({ mode, at: new Date().toISOString(), natsServer, totalSeconds, rows }, null, 2))
  return md
}
