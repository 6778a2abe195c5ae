import { describe, expect, it } from 'vitest'
import { ms } from './durations.js'
import { injectFault, useFaultSystem } from './fixture.js'
import { endRun, sleep } from './verify.js'

const faults = useFaultSystem()

describe('fault: a target region down (connection refused) during a steady stream of writes', () => {
  const DOWN_MS = ms(30_000, 10_000)

  it(`eu refuses connections for ${DOWN_MS / 1000} s and comes back on the same port: it catches up with nothing lost, once, in order; ap is untouched`, async () => {
    const run = await faults.startUnderLoad()
    const eu = run.system.region('eu')
    await sleep(ms(5000, 3000))
    await injectFault(run.system.checker, `eu refuses connections for ${DOWN_MS} ms`, DOWN_MS, { start: async () => await eu.proxy.down(), end: async () => await eu.proxy.up() })
    const report = await endRun(run, ms(10_000, 5000), {
      order: 4,
      fault: `target down ${DOWN_MS / 1000} s (connection refused)`,
      notes: (r) => `eu down, ap untouched (recovered in ${(Math.max(0, ...r.regions.find((x) => x.region === 'ap')!.recoveryMs) / 1000).toFixed(1)} s)`
    })
    expect(report.acknowledged).toBeGreaterThan(100)
  })
})
