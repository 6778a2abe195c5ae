import { describe, expect, it } from 'vitest'
import { ms } from './durations.js'
import { useFaultSystem } from './fixture.js'
import { endRun, sleep } from './verify.js'
import { prng } from '../helpers/fixtures.js'

const faults = useFaultSystem()

describe('fault: replicator instances killed -9, repeatedly, during a steady stream of writes', () => {
  it('every region ends equal to the source: nothing lost, nothing applied twice, every resource in order', async () => {
    const seed = Date.now() & 0xffffffff
    const rand = prng(seed)
    const run = await faults.startUnderLoad({ replicatorsPerRegion: 2 }, { workload: { seed } })
    const system = run.system
    const until = Date.now() + ms(45_000, 15_000)
    let kills = 0
    // Bounded by the window: one kill every 1-3 s, alternating regions; every third takes out
    // every instance of the region at once, so nothing consumes it until they are back.
    while (Date.now() < until) {
      await sleep(1000 + rand() * 2000)
      const region = system.regions[kills % system.regions.length]!
      const victims = kills % 3 === 2 ? region.replicators : [region.replicators[Math.floor(rand() * region.replicators.length)]!]
      const fault = system.checker.fault(`kill -9 ${victims.map((v) => v.label).join(', ')}`)
      await Promise.all(victims.map(async (v) => await v.kill()))
      kills += 1
      await sleep(300 + rand() * 700)
      await Promise.all(victims.map(async (v) => await v.start()))
      fault.end()
    }
    const report = await endRun(run, 2000, {
      order: 1,
      fault: 'replicator kill -9 (repeated)',
      notes: () => `${kills} kills of 1 or both of 2 instances per region; seed ${seed}`
    })
    expect(kills).toBeGreaterThanOrEqual(4)
    expect(report.acknowledged).toBeGreaterThan(100)
  })
})
