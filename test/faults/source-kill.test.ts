import { request } from 'undici'
import { describe, expect, it } from 'vitest'
import { metricValue } from '../helpers/events.js'
import { ms } from './durations.js'
import { useFaultSystem } from './fixture.js'
import { endRun, sleep } from './verify.js'

const faults = useFaultSystem()

describe('fault: the source API killed -9 during a steady stream of writes, restarted on the same spool', () => {
  it('every write the client saw answered 2xx reaches every region once, in order, also when the kill lands with events in the spool', async () => {
    // The source is examples/dist/server.js; its data lives in its memory, so after a kill -9 the
    // reference is what the client saw acknowledged, and the regions must also equal each other.
    // No projects and no grants: they would die with the source's memory.
    const run = await faults.startUnderLoad({ sourceProcess: true }, { seedProjects: false, workload: { projects: [] } })
    const system = run.system
    const source = system.source.process!
    const plainKills = ms(3, 1)
    for (let i = 0; i < plainKills; i++) {
      await sleep(ms(7000, 4000))
      const fault = system.checker.fault('kill -9 source API')
      await source.kill()
      await source.start()
      fault.end()
    }

    // Once more with NATS down: the writes answered meanwhile are only in the outage spool when
    // the process dies; the next process publishes them. (It cannot start while NATS is
    // unreachable: the plugin needs the stream at register time. So NATS comes back first.)
    await sleep(3000)
    const outage = system.checker.fault('kill -9 source API with NATS down (events in the spool)')
    await faults.nats.kill()
    let spooled = 0
    try {
      await sleep(ms(4000, 3000))
      spooled = await spoolEvents(source.url)
      await source.kill()
    } finally {
      await faults.nats.restart()
    }
    await source.start()
    outage.end()
    const report = await endRun(run, ms(6000, 4000), {
      order: 2,
      fault: 'source API kill -9 (restart on same spool)',
      notes: () => `${source.starts - 1} kills, each restarted on the same spool, the last with NATS down and ${spooled} events in the spool`
    })
    expect(spooled).toBeGreaterThan(0)
    expect(report.unacknowledged).toBeLessThanOrEqual(source.starts * 8)
  })
})


/** Events in the source's outage spool, from its /metrics. */
async function spoolEvents (url: string): Promise<number> {
  const res = await request(`${url}/metrics`)
  return metricValue(await res.body.text(), 'regionsync_spool_events', { region: 'us' })
}
