import type { JetStreamManager } from '@nats-io/jetstream'
import { describe, expect, it } from 'vitest'
import { waitFor } from '../helpers/fixtures.js'
import { ms } from './durations.js'
import { streamsOf } from './scan.js'
import { injectFault, useFaultSystemOnCluster } from './fixture.js'
import { endRun, expectReplicatorsRunning, sleep } from './verify.js'

const faults = useFaultSystemOnCluster(3)

/** Replicas of each of the namespace's streams (events, dead letters, KV buckets). */
async function replicasOf (jsm: JetStreamManager, streams: string[]): Promise<Record<string, number>> {
  const out: Record<string, number> = {}
  for (const s of streams) out[s] = (await jsm.streams.info(s)).config.num_replicas
  return out
}

/** True once every replica of every stream is current: a restarted server has caught up. */
async function allCurrent (jsm: JetStreamManager, streams: string[]): Promise<boolean> {
  for (const s of streams) {
    const info = await jsm.streams.info(s)
    const c = info.cluster
    const followers = c?.replicas ?? []
    if (c?.leader === undefined || followers.length !== info.config.num_replicas - 1 || !followers.every((r) => r.current && r.offline !== true)) return false
  }
  return true
}

describe('fault: a three-server NATS cluster (R3), one server killed -9 during writes, then another after the first is back', () => {
  // Not shortened by FAULTS_QUICK: the first seconds after a kill go to elections and expiring
  // pulls, and the window after them must be long enough to show the survivors carrying on.
  const DOWN_MS = 12_000

  it('nothing acknowledged is lost, and replicators and APIs carry on through the survivors by themselves', async () => {
    const startedAt = Date.now()
    const system = await faults.start({ replicas: 3 })
    const streams = streamsOf(system.n)
    // The plugin and the replicators were told only the servers; the stream was made at R3 by the
    // source's plugin (stream: { replicas: 3 }), and everything else follows it.
    expect(await replicasOf(system.jsm, streams)).toEqual(Object.fromEntries(streams.map((s) => [s, 3])))
    await system.seedProjects()
    const load = system.workload().start()
    const victims: string[] = []
    const progress: Array<Record<string, number>> = []
    for (let round = 0; round < 2; round++) {
      await sleep(ms(6000, 4000))
      // The event stream's leader, so every kill forces an election where it hurts most.
      const leader = (await system.jsm.streams.info(system.n.eventStream)).cluster?.leader
      const node = faults.nats.nodes.find((x) => x.name === leader) ?? faults.nats.nodes[round]!
      victims.push(node.name)
      let killedAt = 0
      await injectFault(system.checker, `kill -9 nats-server ${node.name}`, DOWN_MS, {
        start: async () => { await faults.nats.kill(node); killedAt = Date.now() },
        end: async () => await faults.nats.restart(node)
      })
      // Each region went on applying while the server was gone (after the election settled).
      progress.push(Object.fromEntries(system.regions.map((r) => [r.name, r.api.replays.filter((a) => a.handled && a.at > killedAt + 3000 && a.at < killedAt + DOWN_MS).length])))
      await waitFor(`${node.name} to catch up`, async () => await allCurrent(system.jsm, streams), 60_000)
    }
    await endRun({ system, load, startedAt }, ms(5000, 3000), {
      order: 7,
      fault: '3-server cluster, R3: kill -9 one server, then another',
      notes: () => `killed ${victims.join(' then ')} (the stream leader each time) for ${DOWN_MS / 1000} s; applied while down: ${progress.map((p) => Object.entries(p).map(([k, v]) => `${k} ${v}`).join('/')).join(', ')}`
    })
    for (const p of progress) for (const [region, n] of Object.entries(p)) expect(n, `${region} applied writes while a server was down`).toBeGreaterThan(0)
    expectReplicatorsRunning(system)
  })
})
