import { readdirSync, readFileSync } from 'node:fs'

/** Clock ticks a second in /proc/<pid>/stat (USER_HZ, 100 on Linux). */
const TICKS_PER_SEC = 100

/** CPU time (user + system, ms) a process has used so far; null when it is gone or not on Linux. */
export function cpuMs (pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // Fields after the command name, which is in parentheses and may hold spaces.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / TICKS_PER_SEC
  } catch {
    return null
  }
}

/** The pid of the nats-server listening on `port` (the bench's own, started by NatsServer). */
export function natsServerPid (port: number): number | null {
  let dirs: string[]
  try {
    dirs = readdirSync('/proc').filter((d) => /^\d+$/.test(d))
  } catch {
    return null
  }
  for (const d of dirs) {
    try {
      const args = readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0')
      if ((args[0] ?? '').endsWith('nats-server') && args.includes('-p') && args[args.indexOf('-p') + 1] === String(port)) return Number(d)
    } catch {
      // The process ended while we looked.
    }
  }
  return null
}

/** CPU time the whole machine spent busy (all cores, every process), ms. */
export function machineBusyMs (): number | null {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] as string
    const ticks = line.trim().split(/\s+/).slice(1).map(Number)
    const total = ticks.slice(0, 8).reduce((a, b) => a + b, 0)
    const idle = (ticks[3] ?? 0) + (ticks[4] ?? 0)
    return ((total - idle) * 1000) / TICKS_PER_SEC
  } catch {
    return null
  }
}

/**
 * CPU used by a set of processes between `start()` and `stop()`, ms each, with the bench's own
 * process as `bench` and everything else on the machine as `others` (other users of a shared
 * machine show there, and make a measurement less trustworthy).
 */
export class CpuMeter {
  readonly #pids: Record<string, number | null>
  #start: Record<string, number | null> = {}
  #selfStart = process.cpuUsage()
  #machineStart: number | null = null

  constructor (pids: Record<string, number | null>) {
    this.#pids = pids
  }

  start (): void {
    this.#start = Object.fromEntries(Object.entries(this.#pids).map(([k, pid]) => [k, pid === null ? null : cpuMs(pid)]))
    this.#selfStart = process.cpuUsage()
    this.#machineStart = machineBusyMs()
  }

  /** ms of CPU per process (the bench's own process as `bench`); null where it could not be read. */
  stop (): Record<string, number | null> {
    const out: Record<string, number | null> = {}
    for (const [k, pid] of Object.entries(this.#pids)) {
      const before = this.#start[k]
      const after = pid === null ? null : cpuMs(pid)
      out[k] = before === null || before === undefined || after === null ? null : after - before
    }
    const self = process.cpuUsage(this.#selfStart)
    out.bench = (self.user + self.system) / 1000
    const machine = machineBusyMs()
    const ours = Object.values(out).reduce<number>((a, b) => a + (b ?? 0), 0)
    out.others = machine === null || this.#machineStart === null ? null : Math.max(0, machine - this.#machineStart - ours)
    return out
  }
}
