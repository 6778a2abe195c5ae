import { describe, expect, it } from 'vitest'
import { REQUEST_TIMEOUT_MS, ms } from './durations.js'
import { injectFault, useFaultSystem } from './fixture.js'
import { endRun, sleep } from './verify.js'

const faults = useFaultSystem()

describe('fault: a target that hangs (no answer) past the replicators\' HTTP timeout', () => {
  const HANG_MS = ms(15_000, 6000)

  it(`eu answers nothing for ${HANG_MS / 1000} s (--timeout-ms ${REQUEST_TIMEOUT_MS}), half of it after applying the write: nothing lost, nothing applied twice`, async () => {
    const run = await faults.startUnderLoad({ timeoutMs: REQUEST_TIMEOUT_MS })
    const eu = run.system.region('eu')
    await sleep(ms(5000, 3000))
    await injectFault(run.system.checker, `eu hangs for ${HANG_MS} ms`, HANG_MS, { start: () => { eu.proxy.mode = 'hang' }, end: () => { eu.proxy.mode = 'pass' } })
    await endRun(run, ms(8000, 4000), {
      order: 5,
      fault: `target hangs ${HANG_MS / 1000} s (past --timeout-ms ${REQUEST_TIMEOUT_MS})`,
      notes: () => `${eu.proxy.counts.hung} replays got no answer, ${eu.proxy.counts.hungApplied} of them applied before the silence`
    })
    // The case that matters happened: writes the target applied whose answer never came, retried.
    expect(eu.proxy.counts.hungApplied).toBeGreaterThan(0)
  })
})
