import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

/*
 * A CPU budget for one process, as a Kubernetes pod's CPU limit gives it: a cgroup of its own with
 * a CFS quota (cgroup v1's cpu controller, or cgroup v2's cpu.max). Needs root and a writable
 * cgroup tree; `CpuQuota.unavailable()` says why not when it cannot be had.
 */

const V1_ROOT = '/sys/fs/cgroup/cpu'
const V2_ROOT = '/sys/fs/cgroup'
const PERIOD_US = 100_000

const live = new Set<CpuQuota>()

type Flavour = { kind: 'v1', root: string } | { kind: 'v2', root: string }

function flavour (): Flavour | null {
  if (existsSync(join(V1_ROOT, 'cpu.cfs_quota_us'))) return { kind: 'v1', root: V1_ROOT }
  if (existsSync(join(V2_ROOT, 'cgroup.controllers')) && readFileSync(join(V2_ROOT, 'cgroup.subtree_control'), 'utf8').includes('cpu')) return { kind: 'v2', root: V2_ROOT }
  return null
}

export class CpuQuota {
  readonly dir: string
  readonly cores: number

  private constructor (dir: string, cores: number) {
    this.dir = dir
    this.cores = cores
  }

  /** Null when quotas can be made here; else why not, in a few words. */
  static unavailable (): string | null {
    const f = flavour()
    if (f === null) return 'no cgroup cpu controller found (cgroup v1 cpu, or v2 with cpu in subtree_control)'
    try {
      CpuQuota.create('probe', 1).remove()
      return null
    } catch (err) {
      return `cannot make a cgroup under ${f.root} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}; needs root)`
    }
  }

  /** A cgroup of its own limited to `cores` CPUs (0.35 = 35 ms of CPU every 100 ms). */
  static create (name: string, cores: number): CpuQuota {
    const f = flavour()
    if (f === null) throw new Error('no cgroup cpu controller')
    const dir = join(f.root, `regionsync-bench-${process.pid}-${name}`)
    mkdirSync(dir)
    const quotaUs = Math.max(1000, Math.round(cores * PERIOD_US))
    try {
      if (f.kind === 'v1') {
        writeFileSync(join(dir, 'cpu.cfs_period_us'), String(PERIOD_US))
        writeFileSync(join(dir, 'cpu.cfs_quota_us'), String(quotaUs))
      } else {
        writeFileSync(join(dir, 'cpu.max'), `${quotaUs} ${PERIOD_US}`)
      }
    } catch (err) {
      rmdirSync(dir)
      throw err
    }
    const quota = new CpuQuota(dir, cores)
    live.add(quota)
    return quota
  }

  /** Moves a process (every thread of it) into this budget. */
  add (pid: number): void {
    writeFileSync(join(this.dir, 'cgroup.procs'), String(pid))
  }

  /** Removes the cgroup; its processes must have exited (or moved) first. Never throws. */
  remove (): void {
    live.delete(this)
    try { rmdirSync(this.dir) } catch { /* a process still in it: the empty group stays behind, named after this bench's pid */ }
  }
}

/** Removes every quota still there: the bench's last resort on error or Ctrl-C, after killing its children. */
export function removeAllQuotas (): void {
  for (const q of live) q.remove()
}
