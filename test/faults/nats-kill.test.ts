import { describe, expect, it } from 'vitest'
import { ms } from './durations.js'
import { injectFault, useFaultSystem } from './fixture.js'
import { endRun, expectReplicatorsRunning, sleep } from './verify.js'

const faults = useFaultSystem()

describe('fault: nats-server killed -9 during a steady stream of writes, restarted on the same store', () => {
  it('writes during the outage are answered from the spool and reach every region once, in order; replicators resume by themselves', async () => {
    const run = await faults.startUnderLoad()
    const system = run.system
    const outages = [ms(6000, 4000), ms(10_000, 4000)]
    for (const downMs of outages) {
      await sleep(ms(8000, 4000))
      await injectFault(system.checker, `kill -9 nats-server for ${downMs} ms`, downMs, { start: async () => await faults.nats.kill(), end: async () => await faults.nats.restart() })
    }
    await endRun(run, ms(8000, 4000), {
      order: 3,
      fault: 'nats-server kill -9 (restart on same store)',
      notes: () => `${outages.length} outages of ${outages.map((o) => o / 1000).join(' and ')} s`
    })
    expect(system.source.app!.regionsync.spooled).toBe(0)
    expectReplicatorsRunning(system)
  })
})
