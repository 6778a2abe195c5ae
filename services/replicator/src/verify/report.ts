import type { VerifyProgress, VerifyReport } from './verifier.js'

/** Differences listed one per line under the summary table; the rest are in `--json`. */
const MAX_LISTED = 50

function table (header: string[], rows: string[][]): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] as string).length)))
  return [header, ...rows].map((cols) => cols.map((c, i) => c.padEnd(widths[i] as number)).join('  ').trimEnd())
}

/** The human report: one row per type and region, then the differences, then the repairs. */
export function formatVerifyReport (r: VerifyReport): string[] {
  const lines: string[] = []
  const lagging = r.positions.filter((p) => p.pending > 0)
  lines.push(`source ${r.source}; ${r.durationMs} ms; stream at seq ${r.positions[0]?.streamSeq ?? '-'}` +
    (lagging.length === 0 ? '' : `; lagging at start: ${lagging.map((p) => `${p.region} ${p.pending} pending`).join(', ')}`))
  lines.push('')
  const rows = r.types.flatMap((t) => t.regions.map((g) => [
    t.type, g.region, String(t.resources), String(g.listed), String(g.missing), String(g.extra), String(g.different),
    g.beyondLimit > 0 ? `+${g.beyondLimit} more` : '', g.missing + g.extra + g.different + g.beyondLimit === 0 ? 'ok' : 'DIFFERS'
  ]))
  lines.push(...table(['TYPE', 'REGION', 'SOURCE', 'LISTED', 'MISSING', 'EXTRA', 'DIFFERENT', 'UNLISTED', 'RESULT'], rows))
  const settled = r.types.reduce((n, t) => n + t.settled, 0)
  if (settled > 0) lines.push('', `${settled} difference(s) seen while comparing had gone once the regions caught up (lag, not divergence)`)
  if (r.differences.length > 0) {
    lines.push('')
    lines.push(...table(['TYPE', 'REGION', 'ID', 'KIND', 'FIRST FIELD', 'PROOF'],
      r.differences.slice(0, MAX_LISTED).map((d) => [d.type, d.region, d.id, d.kind, d.field ?? '-', d.proof])))
    if (r.differences.length > MAX_LISTED) lines.push(`... ${r.differences.length - MAX_LISTED} more (--json lists all)`)
  }
  if (r.repairs.length > 0) {
    lines.push('')
    lines.push(...table(['REPAIR', 'TYPE', 'ID', 'SEQ', 'DETAIL'],
      r.repairs.map((x) => [x.outcome === 'would-publish' ? `would ${x.method ?? '-'}` : `${x.outcome} ${x.method ?? ''}`.trim(), x.type, x.id, x.seq === null ? '-' : String(x.seq), x.detail === '' ? (x.path ?? '') : x.detail])))
  }
  lines.push('', r.clean ? 'every region matches the source' : 'regions differ from the source')
  return lines
}

/**
 * A one-line progress display for a terminal, redrawn in place. Collections do not say how many
 * resources they hold, so it counts rather than fills a bar.
 */
export class ProgressLine {
  readonly #write: (s: string) => void
  #type = ''
  #started = Date.now()
  #drawn = false

  constructor (write: (s: string) => void) {
    this.#write = write
  }

  update (p: VerifyProgress): void {
    if (p.type !== this.#type) {
      this.#type = p.type
      this.#started = Date.now()
    }
    const s = (Date.now() - this.#started) / 1000
    const rate = s > 0 ? Math.round(p.compared / s) : 0
    this.#write(`\r\x1b[2K${p.type}: ${p.compared.toLocaleString('en')} compared, ${p.differences} differ, ${rate.toLocaleString('en')}/s, ${s.toFixed(0)}s`)
    this.#drawn = true
  }

  done (): void {
    if (this.#drawn) this.#write('\r\x1b[2K')
    this.#drawn = false
  }
}
