import { describe, expect, it } from 'vitest'
import { REQUEST_TIMEOUT_MS, ms } from './durations.js'
import { injectFault, useFaultSystem } from './fixture.js'
import { sleep, verifyRun } from './verify.js'

const faults = useFaultSystem()

describe('fault: a target that hangs (no answer) past the replicators\' HTTP timeout', () => {
  const HANG_MS = ms(15_000, 6000)

  it(`eu answers nothing for ${HANG_MS / 1000} s (--timeout-ms ${REQUEST_TIMEOUT_MS}), half of it after applying the write: nothing lost, nothing applied twice`, async () => {
    const startedAt = Date.now()
    const system = await faults.start({ timeoutMs: REQUEST_TIMEOUT_MS })
    await system.seedProjects()
    const eu = system.region('eu')
    const load = system.workload().start()
    await sleep(ms(5000, 3000))
    await injectFault(system.checker, `eu hangs for ${HANG_MS} ms`, HANG_MS, { start: () => { eu.proxy.mode = 'hang' }, end: () => { eu.proxy.mode = 'pass' } })
    await sleep(ms(8000, 4000))
    await load.stop()
    const { hung, hungApplied } = eu.proxy.counts
    await verifyRun(system, {
      order: 5,
      fault: `target hangs ${HANG_MS / 1000} s (past --timeout-ms ${REQUEST_TIMEOUT_MS})`,
      startedAt,
      notes: () => `${hung} replays got no answer, ${hungApplied} of them applied before the silence`
    })
    // The case that matters happened: writes the target applied whose answer never came, retried.
    expect(hungApplied).toBeGreaterThan(0)
  })
})
