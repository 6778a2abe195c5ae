import { describe, expect, it } from 'vitest'
import { ACK_WAIT_MS, ms } from './durations.js'
import { injectFault, useFaultSystem } from './fixture.js'
import { endRun, sleep } from './verify.js'

/**
 * How long the instance stays frozen: past the suite's ack wait (ACK_WAIT_MS, 5 s) and past the
 * time in which a silent owner loses its partitions (within 5 s by default), so that by the time it
 * wakes, the other instance has taken over what it held, including events it had in hand and
 * later events of the same resources. The same in quick mode: shorter would test nothing.
 */
const FREEZE_MS = 10_000

const faults = useFaultSystem()

describe('fault: a replicator instance frozen (SIGSTOP) past its ownership, then woken (SIGCONT), during a steady stream of writes', () => {
  it('the woken instance applies nothing stale: every region equal to the source, nothing applied twice, every resource in order', async () => {
    expect(FREEZE_MS).toBeGreaterThan(ACK_WAIT_MS)
    const run = await faults.startUnderLoad({ replicatorsPerRegion: 2 })
    const eu = run.system.region('eu')
    const victim = eu.replicators[0]!
    await sleep(ms(5000, 3000))
    // eu answers late for a moment, so that the instance is frozen with replays in flight (sent,
    // and applied behind the proxy, their answers not yet read) besides events in hand.
    eu.proxy.slowMs = 500
    eu.proxy.mode = 'slow'
    await sleep(1000)
    await injectFault(run.system.checker, `SIGSTOP ${victim.label} for ${FREEZE_MS} ms`, FREEZE_MS, {
      start: () => { victim.signal('SIGSTOP'); eu.proxy.mode = 'pass' },
      end: () => { victim.signal('SIGCONT') }
    })
    // Writes keep coming while it wakes to what it held: whatever it sends now is stale.
    const report = await endRun(run, ms(10_000, 6000), {
      order: 10,
      fault: 'replicator frozen (SIGSTOP) then woken',
      notes: () => `${victim.label} frozen ${FREEZE_MS / 1000} s with replays in flight (eu answering 500 ms late just before), 1 other instance of eu running`
    })
    // It woke and carried on; it was not killed by what it found.
    expect(victim.running, victim.tail()).toBe(true)
    expect(report.acknowledged).toBeGreaterThan(100)
  })
})
