import { afterAll, beforeAll } from 'vitest'
import { NatsCluster } from '../helpers/nats-cluster.js'
import { NatsServer } from '../helpers/nats-server.js'
import type { Checker } from './checker.js'
import { FaultSystem, type SystemOptions } from './system.js'
import { sleep, type LoadedRun } from './verify.js'
import type { WorkloadOptions } from './workload.js'

/** What a fault file gets: its NATS, and the system under test started on it. */
export interface FaultFixture<N> {
  /** The file's nats-server (or cluster), started before its tests; the faults kill and restart it. */
  readonly nats: N
  /** Starts the system under test on the file's NATS; it is stopped after the file, before NATS. */
  start: (options?: Omit<SystemOptions, 'servers'>) => Promise<FaultSystem>
  /**
   * A run's beginning: starts the system, creates the projects (unless `seedProjects: false`) and
   * starts the client's writes (`workload` overrides the system's defaults).
   */
  startUnderLoad: (options?: Omit<SystemOptions, 'servers'>, load?: { seedProjects?: boolean, workload?: Partial<Omit<WorkloadOptions, 'checker' | 'credentials' | 'url'>> }) => Promise<LoadedRun>
}

function fixture<N extends { stop: () => Promise<void> }> (startNats: () => Promise<N>, serversOf: (n: N) => string[]): FaultFixture<N> {
  let nats: N | undefined
  const systems: FaultSystem[] = []
  beforeAll(async () => { nats = await startNats() })
  afterAll(async () => {
    for (const s of systems.reverse()) await s.stop()
    await nats?.stop()
  })
  return {
    get nats (): N {
      if (nats === undefined) throw new Error('NATS is started in beforeAll: use it inside a test')
      return nats
    },
    async start (options = {}) {
      const system = await FaultSystem.start({ ...options, servers: serversOf(this.nats) })
      systems.push(system)
      return system
    },
    async startUnderLoad (options = {}, load = {}) {
      const startedAt = Date.now()
      const system = await this.start(options)
      if (load.seedProjects !== false) await system.seedProjects()
      return { system, load: system.workload(load.workload).start(), startedAt }
    }
  }
}

/** The fault suite's set-up on one nats-server: one per file, the system stopped before it. */
export function useFaultSystem (): FaultFixture<NatsServer> {
  return fixture(async () => await NatsServer.start(), (n) => [n.url])
}

/** The same on a cluster of `size` nats-servers. */
export function useFaultSystemOnCluster (size: number): FaultFixture<NatsCluster> {
  return fixture(async () => await NatsCluster.start(size), (c) => c.servers)
}

/**
 * One fault window, marked in the checker from before `start` to after `end`: the fault starts,
 * holds `forMs`, and ends, also when the wait is cut short.
 */
export async function injectFault (checker: Checker, label: string, forMs: number, fault: { start: () => unknown, end: () => unknown }): Promise<void> {
  const window = checker.fault(label)
  await fault.start()
  try {
    await sleep(forMs)
  } finally {
    await fault.end()
  }
  window.end()
}
