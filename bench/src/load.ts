import autocannon from 'autocannon'
import { Pool } from 'undici'
import { percentile, round, sleep } from './util.js'

/** Requests the open-loop client lets be in flight; past this a due request is counted as not sent. */
const MAX_IN_FLIGHT = 1024
const OPEN_LOOP_CONNECTIONS = 64

export interface LoadResult {
  requestsPerSec: number
  seconds: number
  ok: number
  non2xx: number
  errors: number
  p50Ms: number
  p90Ms: number
  p99Ms: number
  maxMs: number
}

/**
 * Closed-loop load with autocannon on a fixed number of connections for a fixed time. Latencies
 * are taken from every 2xx response (autocannon's own histogram rounds to whole milliseconds).
 */
export async function closedLoop (url: string, body: string, connections: number, seconds: number): Promise<LoadResult> {
  const latencies: number[] = []
  let ok = 0
  let non2xx = 0
  const started = performance.now()
  const result = await new Promise<autocannon.Result>((resolve, reject) => {
    const instance = autocannon({
      url: `${url}/v3/users`,
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body,
      connections,
      pipelining: 1,
      duration: seconds,
      timeout: 10
    }, (err, res) => { if (err !== null) reject(err); else resolve(res) })
    instance.on('response', (_client: unknown, status: number, _bytes: number, ms: number) => {
      if (status >= 200 && status < 300) { ok++; latencies.push(ms) } else non2xx++
    })
  })
  const elapsed = (performance.now() - started) / 1000
  return {
    requestsPerSec: ok / elapsed,
    seconds: elapsed,
    ok,
    non2xx,
    errors: result.errors,
    p50Ms: percentile(latencies, 50),
    p90Ms: percentile(latencies, 90),
    p99Ms: percentile(latencies, 99),
    maxMs: percentile(latencies, 100)
  }
}

export interface OpenLoopResult {
  sent: number
  ok: number
  non2xx: number
  /** Requests that were due while MAX_IN_FLIGHT were already waiting. */
  notSent: number
  achievedRate: number
  p50Ms: number
  p90Ms: number
  p99Ms: number
  maxMs: number
}

/**
 * Sends `POST /v3/users` at a fixed rate whatever the responses do (open loop), for `seconds`.
 * Latency counts from when a request was due, so a stall shows in it instead of lowering the rate;
 * requests due in the first `warmupSeconds` are sent but not counted in the latencies.
 */
export async function openLoop (url: string, body: string, rate: number, seconds: number, warmupSeconds: number, onTick: (sent: number) => void): Promise<OpenLoopResult> {
  const origin = new URL(url).origin
  const pool = new Pool(origin, { connections: OPEN_LOOP_CONNECTIONS, keepAliveTimeout: 30_000 })
  const latencies: number[] = []
  let sent = 0
  let ok = 0
  let non2xx = 0
  let notSent = 0
  let inFlight = 0
  const pending = new Set<Promise<void>>()
  const intervalMs = 1000 / rate
  const t0 = performance.now()
  const end = t0 + seconds * 1000
  const measureFrom = t0 + warmupSeconds * 1000
  let lastTick = t0
  const fire = (dueAt: number): void => {
    inFlight++
    const p: Promise<void> = pool.request({ method: 'POST', path: '/v3/users', headers: { 'content-type': 'application/json' }, body })
      .then(async (res) => {
        await res.body.dump()
        if (res.statusCode >= 200 && res.statusCode < 300) {
          ok++
          if (dueAt >= measureFrom) latencies.push(performance.now() - dueAt)
        } else non2xx++
      }, () => { non2xx++ })
      .finally(() => { inFlight--; pending.delete(p) })
    pending.add(p)
  }
  let due = 0
  while (performance.now() < end) {
    const now = performance.now()
    const shouldHave = Math.min(Math.floor((now - t0) / intervalMs) + 1, Math.ceil(seconds * rate))
    while (due < shouldHave) {
      if (inFlight < MAX_IN_FLIGHT) { fire(t0 + due * intervalMs); sent++ } else notSent++
      due++
    }
    if (now - lastTick > 1000) { lastTick = now; onTick(sent) }
    await sleep(1)
  }
  await Promise.allSettled([...pending])
  await pool.close()
  return {
    sent,
    ok,
    non2xx,
    notSent,
    achievedRate: round(ok / seconds, 0),
    p50Ms: round(percentile(latencies, 50), 2),
    p90Ms: round(percentile(latencies, 90), 2),
    p99Ms: round(percentile(latencies, 99), 2),
    maxMs: round(percentile(latencies, 100), 2)
  }
}

