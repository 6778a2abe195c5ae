import { describe, expect, it } from 'vitest'
import { ms } from './durations.js'
import { injectFault, useFaultSystem } from './fixture.js'
import { sleep, verifyRun } from './verify.js'

/** Round trip between region ap (its API and its replicators) and NATS: another continent. */
const AP_RTT_MS = 80

const faults = useFaultSystem()

describe(`fault: region ap ${AP_RTT_MS} ms from NATS (a delay proxy), one of its instances killed -9 and restarted mid-load`, () => {
  it('every region ends equal to the source: nothing lost, nothing applied twice, every resource in order', async () => {
    const startedAt = Date.now()
    const system = await faults.start({ natsRttMs: { ap: AP_RTT_MS } })
    await system.seedProjects()
    const ap = system.region('ap')
    const victim = ap.replicators[1]!
    const load = system.workload().start()
    await sleep(ms(10_000, 6000))
    // Every event in flight far from NATS when its instance dies: the handover happens at a distance too.
    await injectFault(system.checker, `kill -9 ${victim.label}, ${AP_RTT_MS} ms from NATS`, 500, { start: async () => await victim.kill(), end: async () => await victim.start() })
    await sleep(ms(10_000, 6000))
    await load.stop()
    const report = await verifyRun(system, {
      order: 12,
      fault: `region ${AP_RTT_MS} ms from NATS, kill -9 there`,
      startedAt,
      notes: () => `ap's API and replicators reach NATS through a delay proxy (${AP_RTT_MS} ms round trip); ${victim.label} killed -9 and restarted mid-load`
    })
    expect(report.acknowledged).toBeGreaterThan(100)
  })
})
