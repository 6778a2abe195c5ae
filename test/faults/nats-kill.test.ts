import { describe, expect, it } from 'vitest'
import { ms } from './durations.js'
import { injectFault, useFaultSystem } from './fixture.js'
import { sleep, verifyRun } from './verify.js'

const faults = useFaultSystem()

describe('fault: nats-server killed -9 during a steady stream of writes, restarted on the same store', () => {
  it('writes during the outage are answered from the spool and reach every region once, in order; replicators resume by themselves', async () => {
    const startedAt = Date.now()
    const system = await faults.start()
    await system.seedProjects()
    const load = system.workload().start()
    const outages = [ms(6000, 4000), ms(10_000, 4000)]
    for (const downMs of outages) {
      await sleep(ms(8000, 4000))
      await injectFault(system.checker, `kill -9 nats-server for ${downMs} ms`, downMs, { start: async () => await faults.nats.kill(), end: async () => await faults.nats.restart() })
    }
    await sleep(ms(8000, 4000))
    await load.stop()
    await verifyRun(system, {
      order: 3,
      fault: 'nats-server kill -9 (restart on same store)',
      startedAt,
      notes: () => `${outages.length} outages of ${outages.map((o) => o / 1000).join(' and ')} s`
    })
    expect(system.source.app!.regionsync.spooled).toBe(0)
    for (const r of system.regions) for (const p of r.replicators) expect(p.running, `${p.label} still running`).toBe(true)
  })
})
