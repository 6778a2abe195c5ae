import { describe, expect, it } from 'vitest'
import { ms } from './durations.js'
import { injectFault, useFaultSystem } from './fixture.js'
import { endRun, sleep } from './verify.js'

const faults = useFaultSystem()

describe('fault: a target that answers slowly (200 ms a replay)', () => {
  const SLOW_MS = ms(25_000, 8000)

  it(`eu takes 200 ms over every answer for ${SLOW_MS / 1000} s: it falls behind and catches up, nothing lost, once, in order`, async () => {
    const run = await faults.startUnderLoad()
    const eu = run.system.region('eu')
    await sleep(ms(4000, 2000))
    eu.proxy.slowMs = 200
    await injectFault(run.system.checker, `eu answers 200 ms late for ${SLOW_MS} ms`, SLOW_MS, { start: () => { eu.proxy.mode = 'slow' }, end: () => { eu.proxy.mode = 'pass' } })
    await endRun(run, ms(6000, 3000), {
      order: 6,
      fault: 'target slow (200 ms per answer)',
      notes: () => `${eu.proxy.counts.slowed} replays answered 200 ms late over ${SLOW_MS / 1000} s`
    })
    expect(eu.proxy.counts.slowed).toBeGreaterThan(50)
  })
})
