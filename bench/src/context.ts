import { NatsServer } from '../../test/helpers/nats-server.js'
import { Child, type Message } from './children.js'
import type { ReplicatorChildConfig } from './replicator-child.js'
import type { TargetChildConfig, TargetDone } from './target-child.js'
import { Progress } from './util.js'

export interface BenchContext {
  quick: boolean
  /** Where measured children write their CPU profiles; null when not profiling. */
  profileDir: string | null
  progress: Progress
  signingKey: string
  /** Every section's nats-server, so an interrupted run can stop them. */
  natsServers: Set<NatsServer>
}

/** A nats-server of the section's own (free port, temporary store), stopped and removed after `fn`. */
export async function withNats<T> (ctx: BenchContext, fn: (nats: NatsServer) => Promise<T>): Promise<T> {
  const nats = await NatsServer.start()
  ctx.natsServers.add(nats)
  try {
    return await fn(nats)
  } finally {
    await nats.stop()
    ctx.natsServers.delete(nats)
  }
}

/** Stops children in parallel; every child is asked to close, then killed after a grace period. */
export async function stopAll (children: Array<Child | null | undefined>): Promise<void> {
  await Promise.all(children.map(async (c) => await c?.stop()))
}

export async function startTarget (config: TargetChildConfig): Promise<{ child: Child, url: string }> {
  const child = new Child(`target ${config.region}`, './target-child.js', config)
  const ready = await child.next<Message & { url: string }>('ready', 30_000)
  return { child, url: ready.url }
}

/** Node flags that make a child write a CPU profile named `profileName` on exit, when profiling. */
export function profileArgs (ctx: BenchContext, profileName: string): string[] {
  return ctx.profileDir === null ? [] : ['--cpu-prof', `--cpu-prof-dir=${ctx.profileDir}`, `--cpu-prof-name=${profileName}.cpuprofile`]
}

export function startClient (ctx: BenchContext, config: ReplicatorChildConfig, profileName: string, execArgv: string[] = []): Child {
  return new Child(`${config.mode} ${config.instance}`, './replicator-child.js', config, [...execArgv, ...profileArgs(ctx, profileName)])
}

/**
 * Waits for the target to have answered its expected writes, asking it for its count every
 * second to drive the progress line. Bounded by `timeoutMs`; on timeout the error says how far
 * it got, or with `partial` the answer is what the target had done by then.
 */
export async function waitForTarget (ctx: BenchContext, target: Child, expect: number, timeoutMs: number, partial = false): Promise<TargetDone & { partial: boolean }> {
  let count = 0
  target.on('progress', (m) => {
    count = m.count as number
    ctx.progress.update(`${count.toLocaleString('en-US')} / ${expect.toLocaleString('en-US')} applied`)
  })
  const ticker = setInterval(() => target.send({ type: 'progress' }), 1000)
  try {
    return { ...await target.next<TargetDone>('done', timeoutMs), partial: false }
  } catch (err) {
    if (partial) {
      clearInterval(ticker)
      const p = await target.ask<Message & { count: number, non2xx: number, firstMs: number, nowMs: number }>({ type: 'progress' }, 'progress')
      return { type: 'done', count: p.count, non2xx: p.non2xx, firstMs: p.firstMs, lastMs: p.nowMs, partial: true }
    }
    throw new Error(`${(err as Error).message}; the target had answered ${count} of ${expect}`)
  } finally {
    clearInterval(ticker)
  }
}

/** Events a second the target saw: from the first write's arrival to the last write's answer. */
export function targetRate (done: TargetDone): { seconds: number, eventsPerSec: number } {
  const seconds = (done.lastMs - done.firstMs) / 1000
  return { seconds, eventsPerSec: seconds > 0 ? done.count / seconds : Number.NaN }
}
