import { readFileSync } from 'node:fs'
import { pathToFileURL } from 'node:url'

/*
 * Summarises a V8 .cpuprofile (node --cpu-prof): where the process spent its time, by package and
 * by function, self and inclusive. Run alone with
 *   node bench/dist/bench/src/profile-summary.js <file.cpuprofile> [top]
 */

interface ProfileNode {
  id: number
  callFrame: { functionName: string, url: string, lineNumber: number }
  children?: number[]
}

interface CpuProfile {
  nodes: ProfileNode[]
  samples: number[]
  timeDeltas: number[]
  startTime: number
  endTime: number
}

export interface Share {
  name: string
  ms: number
  percent: number
}

export interface ProfileSummary {
  file: string
  totalMs: number
  /** Time not idle: what the process actually ran. */
  busyMs: number
  byPackage: Share[]
  selfByFunction: Share[]
  /** Inclusive time of regionsync's own functions (and what they call). */
  inclusiveOurs: Share[]
}

const OURS_RE = /\/(services\/(publisher|replicator)|shared|examples)\/dist\//

/** Which package (or runtime part) a script URL belongs to. */
export function packageOf (url: string, functionName: string): string {
  if (url === '') return `(${functionName === '' ? 'native' : functionName.replace(/[()]/g, '')})`
  if (url.startsWith('node:')) return 'node:internal'
  const nm = /node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(url)
  if (nm !== null) return nm[1] as string
  const ours = /\/(services\/publisher|services\/replicator|shared|examples|bench)\/dist\//.exec(url)
  if (ours !== null) return ours[1] === 'bench' ? 'bench' : `@regionsync/${(ours[1] as string).replace('services/', '')}`
  return url
}

function frameName (n: ProfileNode): string {
  const f = n.callFrame
  const file = f.url.replace(/^file:\/\//, '').replace(/^.*\/node_modules\//, '').replace(/^.*\/(services|shared|examples|bench)\//, '$1/')
  return `${f.functionName === '' ? '(anonymous)' : f.functionName} ${file}:${f.lineNumber + 1}`
}

export function summariseProfile (file: string, top = 15): ProfileSummary {
  const p = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile
  const byId = new Map(p.nodes.map((n) => [n.id, n]))
  const parent = new Map<number, number>()
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id)
  const self = new Map<number, number>()
  for (let i = 0; i < p.samples.length; i++) {
    const id = p.samples[i] as number
    self.set(id, (self.get(id) ?? 0) + ((p.timeDeltas[i] ?? 0) / 1000))
  }
  const totalMs = (p.endTime - p.startTime) / 1000
  let idleMs = 0
  const pkg = new Map<string, number>()
  const fn = new Map<string, number>()
  const inclusive = new Map<string, number>()
  for (const [id, ms] of self) {
    const n = byId.get(id) as ProfileNode
    if (n.callFrame.functionName === '(idle)') { idleMs += ms; continue }
    const k = packageOf(n.callFrame.url, n.callFrame.functionName)
    pkg.set(k, (pkg.get(k) ?? 0) + ms)
    const f = frameName(n)
    fn.set(f, (fn.get(f) ?? 0) + ms)
    const seen = new Set<string>()
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const node = byId.get(cur) as ProfileNode
      if (!OURS_RE.test(node.callFrame.url)) continue
      const name = frameName(node)
      if (seen.has(name)) continue
      seen.add(name)
      inclusive.set(name, (inclusive.get(name) ?? 0) + ms)
    }
  }
  const busyMs = totalMs - idleMs
  const shares = (m: Map<string, number>, limit: number): Share[] => [...m]
    .sort((a, b) => b[1] - a[1])
    .slice(0, limit)
    .map(([name, ms]) => ({ name, ms: Math.round(ms), percent: Math.round((ms / busyMs) * 1000) / 10 }))
  return { file, totalMs: Math.round(totalMs), busyMs: Math.round(busyMs), byPackage: shares(pkg, top), selfByFunction: shares(fn, top), inclusiveOurs: shares(inclusive, top) }
}

export function formatProfile (s: ProfileSummary): string[] {
  const lines = [`profile ${s.file}: ${s.totalMs} ms, busy ${s.busyMs} ms (percentages are of busy time)`]
  const block = (title: string, rows: Share[]): void => {
    lines.push(`  ${title}`)
    for (const r of rows) lines.push(`    ${r.percent.toFixed(1).padStart(5)}%  ${String(r.ms).padStart(7)} ms  ${r.name}`)
  }
  block('self time by package', s.byPackage)
  block('self time by function', s.selfByFunction)
  block('inclusive time of regionsync functions', s.inclusiveOurs)
  return lines
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const [file, top] = process.argv.slice(2)
  if (file === undefined) {
    process.stderr.write('usage: node bench/dist/bench/src/profile-summary.js <file.cpuprofile> [top]\n')
    process.exit(2)
  }
  for (const line of formatProfile(summariseProfile(file, top === undefined ? 15 : Number(top)))) process.stdout.write(`${line}\n`)
}
