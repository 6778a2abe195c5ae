import { AckPolicy, jetstream, jetstreamManager, type JsMsg } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import { Replicator, buildReplay, type ReplicatorOptions } from '@regionsync/replicator'
import { EVENT_SIGNATURE_HEADER, connectNats, createLogger, createSigner, decodeEvent, names, type RegionsyncEvent } from '@regionsync/shared'
import { Pool } from 'undici'
import { childConfig, fail, serveParent, toParent } from './children.js'

/**
 * The three ways of getting a backlog to a target that the replication run compares, each alone
 * in its process:
 * - `replicator`: regionsync's Replicator, everything on (ordering, idempotency records,
 *   signature checks);
 * - `baseline`: what a user writes by hand: one JetStream consumer, fetch() each event to the
 *   target, ack; no ordering, no idempotency, no signature check; same concurrency;
 * - `raw`: the physical limit: the replays the replicator would send (same method, path,
 *   headers, bodies), built before the clock starts, sent straight to the target over an undici
 *   Pool with the same concurrency and connection count.
 */
export interface ReplicatorChildConfig {
  mode: 'replicator' | 'baseline' | 'raw'
  natsUrl: string
  namespace: string
  region: string
  instance: string
  targetUrl: string
  token: string
  signingKey: string
  /** Replays in flight in the client (`--concurrency`); the replicator's default when absent. */
  concurrency?: number
  /**
   * `replicator` only: events in flight per owned partition (`--window`; 1 is one at a time).
   * The replicator's default when absent.
   */
  window?: number
  /** Events the stream holds (raw reads them all before the clock starts). */
  expect: number
}

const MEMORY_SAMPLE_MS = 50
const LOAD_TIMEOUT_MS = 120_000

type Replay = ReturnType<typeof buildReplay>

/** The in-flight count raw and baseline are held to (the replicator has a default of its own). */
function clientConcurrency (c: ReplicatorChildConfig): number {
  if (c.concurrency === undefined) throw new Error(`${c.mode}: needs a concurrency`)
  return c.concurrency
}

async function main (): Promise<void> {
  const c = childConfig<ReplicatorChildConfig>()
  let peakRss = 0
  let peakHeap = 0
  const sample = (): void => {
    const m = process.memoryUsage()
    peakRss = Math.max(peakRss, m.rss)
    peakHeap = Math.max(peakHeap, m.heapUsed)
  }
  sample()
  setInterval(sample, MEMORY_SAMPLE_MS).unref()

  const nc = await connectNats({ servers: c.natsUrl, name: `bench-${c.mode}-${c.instance}` })
  let applied = 0
  let stats: () => Record<string, unknown> = () => ({ applied })
  let close: () => Promise<void> = async () => { await nc.close() }

  if (c.mode === 'replicator') {
    const options: ReplicatorOptions & { window?: number } = {
      region: c.region,
      target: c.targetUrl,
      targetToken: c.token,
      signingKey: c.signingKey,
      connection: nc,
      ownsConnection: true,
      logger: createLogger({ level: process.env.LOG_LEVEL ?? 'silent' }),
      namespace: c.namespace,
      instance: c.instance,
      ...(c.concurrency === undefined ? {} : { concurrency: c.concurrency, connections: c.concurrency }),
      ...(c.window === undefined ? {} : { window: c.window })
    }
    const replicator = await Replicator.start(options)
    stats = () => ({ ...replicator.counts })
    close = async () => { await replicator.close() }
  } else if (c.mode === 'baseline') {
    const stop = await runBaseline(nc, c, () => { applied++ })
    close = async () => { await stop(); await nc.close() }
  } else {
    const replays = await loadReplays(nc, c)
    await nc.close()
    const concurrency = clientConcurrency(c)
    const pool = new Pool(new URL(c.targetUrl).origin, { connections: concurrency, keepAliveTimeout: 30_000 })
    close = async () => { await pool.close() }
    serveParentWith({ go: () => { sendAll(pool, replays, concurrency, () => { applied++ }).catch(fail) } })
    toParent({ type: 'loaded', replays: replays.length })
    return
  }
  serveParentWith({})
  toParent({ type: 'ready' })

  function serveParentWith (extra: Record<string, () => void>): void {
    serveParent({
      ...extra,
      stats: (m) => {
        sample()
        // What the process still holds once garbage is gone (asked for after a drain, when the
        // child runs with --expose-gc): the memory that could grow with a backlog.
        let retainedHeap: number | null = null
        if (m.gc === true && typeof globalThis.gc === 'function') {
          globalThis.gc()
          retainedHeap = process.memoryUsage().heapUsed
        }
        toParent({ type: 'stats', ...stats(), applied: (stats().applied as number | undefined) ?? applied, peakRss, peakHeap, retainedHeap })
      }
    }, close)
  }
}

/** A hand-written consumer: consume, fetch, ack; `concurrency` requests at once. */
async function runBaseline (nc: NatsConnection, c: ReplicatorChildConfig, onApplied: () => void): Promise<() => Promise<void>> {
  const jsm = await jetstreamManager(nc)
  const stream = names(c.namespace).eventStream
  const durable = `baseline_${c.region}`
  await jsm.consumers.add(stream, { durable_name: durable, ack_policy: AckPolicy.Explicit, max_ack_pending: 1000 })
  const consumer = await jetstream(nc).consumers.get(stream, durable)
  const messages = await consumer.consume({ max_messages: 256 })
  const auth = `Bearer ${c.token}`
  const concurrency = clientConcurrency(c)
  const apply = async (m: JsMsg): Promise<void> => {
    const e = m.json<RegionsyncEvent>()
    const res = await fetch(c.targetUrl + e.path + (e.query === '' ? '' : `?${e.query}`), {
      method: e.method,
      headers: { 'content-type': e.contentType ?? 'application/octet-stream', authorization: auth },
      // The bench's publisher never seals bodies.
      body: e.body === null ? null : Buffer.from(e.body, e.bodyEncoding as BufferEncoding)
    })
    await res.arrayBuffer()
    if (res.ok) { m.ack(); onApplied() } else m.nak()
  }
  const loop = (async () => {
    const inflight = new Set<Promise<void>>()
    for await (const m of messages) {
      const p: Promise<void> = apply(m).catch(() => m.nak()).finally(() => inflight.delete(p))
      inflight.add(p)
      if (inflight.size >= concurrency) await Promise.race(inflight)
    }
    await Promise.allSettled(inflight)
  })()
  return async () => { messages.stop(); await loop }
}

/** Reads every event from the stream and builds the replay the replicator would send for it. */
async function loadReplays (nc: NatsConnection, c: ReplicatorChildConfig): Promise<Replay[]> {
  const signer = createSigner(c.signingKey)
  const target = { url: new URL(c.targetUrl), token: c.token, timeoutMs: 10_000, connections: clientConcurrency(c) }
  const consumer = await jetstream(nc).consumers.get(names(c.namespace).eventStream)
  const messages = await consumer.consume({ max_messages: 1000 })
  const replays: Replay[] = []
  const deadline = setTimeout(() => messages.stop(), LOAD_TIMEOUT_MS)
  for await (const m of messages) {
    signer.verifyEvent(m.data, m.headers?.get(EVENT_SIGNATURE_HEADER))
    // With its stream sequence, as the replicator sends it (a target's plugin may use it).
    replays.push(buildReplay(decodeEvent(m.data), target, signer, m.seq))
    if (replays.length >= c.expect) break
  }
  clearTimeout(deadline)
  messages.stop()
  if (replays.length < c.expect) throw new Error(`raw: read ${replays.length} of ${c.expect} events from the stream`)
  return replays
}

async function sendAll (pool: Pool, replays: Replay[], concurrency: number, onApplied: () => void): Promise<void> {
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < replays.length) {
      const r = replays[next++] as Replay
      const res = await pool.request({ method: r.method as 'POST', path: r.path, headers: r.headers, body: r.body ?? undefined })
      await res.body.dump()
      if (res.statusCode >= 200 && res.statusCode < 300) onApplied()
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker))
}

main().catch(fail)
