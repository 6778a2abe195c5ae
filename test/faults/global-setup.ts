import { clearRows, readRows, writeSummary } from './summary.js'

/** Clears the rows of an earlier run; after this run, prints the table and writes the summary files. */
export default function setup (): () => void {
  clearRows()
  const started = Date.now()
  return () => {
    const rows = readRows()
    if (rows.length === 0) return
    const md = writeSummary(rows, Math.round((Date.now() - started) / 1000))
    process.stdout.write(`\n${md}\nwritten to test/output/faults-summary.md and test/output/faults-summary.json\n`)
  }
}
