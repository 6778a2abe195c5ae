import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { NatsServer } from '../helpers/nats-server.js'
import { ms } from './durations.js'
import { FaultSystem } from './system.js'
import { sleep, verifyRun } from './verify.js'

let nats: NatsServer
let system: FaultSystem | undefined
beforeAll(async () => { nats = await NatsServer.start() })
afterAll(async () => {
  await system?.stop()
  await nats.stop()
})

describe('fault: a target that answers slowly (200 ms a replay)', () => {
  const SLOW_MS = ms(25_000, 8000)

  it(`eu takes 200 ms over every answer for ${SLOW_MS / 1000} s: it falls behind and catches up, nothing lost, once, in order`, async () => {
    const startedAt = Date.now()
    system = await FaultSystem.start({ servers: [nats.url] })
    await system.seedProjects()
    const eu = system.region('eu')
    const load = system.workload().start()
    await sleep(ms(4000, 2000))
    const fault = system.checker.fault(`eu answers 200 ms late for ${SLOW_MS} ms`)
    eu.proxy.slowMs = 200
    eu.proxy.mode = 'slow'
    await sleep(SLOW_MS)
    eu.proxy.mode = 'pass'
    fault.end()
    await sleep(ms(6000, 3000))
    await load.stop()
    const { slowed } = eu.proxy.counts
    await verifyRun(system, {
      order: 6,
      fault: 'target slow (200 ms per answer)',
      startedAt,
      notes: () => `${slowed} replays answered 200 ms late over ${SLOW_MS / 1000} s`
    })
    expect(slowed).toBeGreaterThan(50)
  })
})
