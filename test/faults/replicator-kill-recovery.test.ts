import { describe, expect, it } from 'vitest'
import { CONVERGE_MS, ms } from './durations.js'
import { useFaultSystem } from './fixture.js'
import { sleep, verifyRun } from './verify.js'

/**
 * Longest the region may take, from the load's end, to have caught up after one of its two
 * instances was killed -9 shortly before: the bound (its partitions move within 5 s, then
 * the backlog drains). A bound on time is the point of this test; it is generous for that reason.
 */
const CATCH_UP_LIMIT_MS = 8000

const faults = useFaultSystem()

describe('fault: one of two replicator instances killed -9 mid-load, with the default settings, not restarted', () => {
  it(`the region catches up within ${CATCH_UP_LIMIT_MS / 1000} s of the load's end; nothing lost, nothing applied twice, every resource in order`, async () => {
    // The command makes the consumers with its own defaults (no short ack wait from the suite).
    const { system, load, startedAt } = await faults.startUnderLoad({ replicatorsPerRegion: 2, suiteConsumers: false })
    const eu = system.region('eu')
    const victim = eu.replicators[0]!
    await sleep(ms(10_000, 6000))
    const fault = system.checker.fault(`kill -9 ${victim.label}`)
    await victim.kill()
    fault.end()
    // The load goes on a little: the survivor must take over the dead instance's partitions while
    // writes still arrive in them.
    await sleep(2000)
    await load.stop()
    const caughtUpMs = await system.waitForRegions(CONVERGE_MS, ['eu'])
    console.info(`eu caught up ${(caughtUpMs / 1000).toFixed(1)} s after the load's end (kill -9 of ${victim.label} 2 s before it)`)
    await verifyRun(system, {
      order: 11,
      fault: 'replicator kill -9 (1 of 2, defaults), recovery',
      startedAt,
      notes: () => `${victim.label} killed 2 s before the load's end, not restarted; eu caught up ${(caughtUpMs / 1000).toFixed(1)} s after the load's end`
    })
    expect(caughtUpMs, `eu caught up ${caughtUpMs} ms after the load's end`).toBeLessThan(CATCH_UP_LIMIT_MS)
  })
})
