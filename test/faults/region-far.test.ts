import { describe, expect, it } from 'vitest'
import { ms } from './durations.js'
import { injectFault, useFaultSystem } from './fixture.js'
import { endRun, sleep } from './verify.js'

/** Round trip between region ap (its API and its replicators) and NATS: another continent. */
const AP_RTT_MS = 80

const faults = useFaultSystem()

describe(`fault: region ap ${AP_RTT_MS} ms from NATS (a delay proxy), one of its instances killed -9 and restarted mid-load`, () => {
  it('every region ends equal to the source: nothing lost, nothing applied twice, every resource in order', async () => {
    const run = await faults.startUnderLoad({ natsRttMs: { ap: AP_RTT_MS } })
    const ap = run.system.region('ap')
    const victim = ap.replicators[1]!
    await sleep(ms(10_000, 6000))
    // Every event in flight far from NATS when its instance dies: the handover happens at a distance too.
    await injectFault(run.system.checker, `kill -9 ${victim.label}, ${AP_RTT_MS} ms from NATS`, 500, { start: async () => await victim.kill(), end: async () => await victim.start() })
    const report = await endRun(run, ms(10_000, 6000), {
      order: 12,
      fault: `region ${AP_RTT_MS} ms from NATS, kill -9 there`,
      notes: () => `ap's API and replicators reach NATS through a delay proxy (${AP_RTT_MS} ms round trip); ${victim.label} killed -9 and restarted mid-load`
    })
    expect(report.acknowledged).toBeGreaterThan(100)
  })
})
