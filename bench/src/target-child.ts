import { mkdtemp, rm } from 'node:fs/promises'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import type { NatsConnection } from '@nats-io/transport-node'
import { buildIdentityApi } from '@regionsync/examples'
import { connectNats } from '@regionsync/shared'
import { childConfig, fail, serveParent, toParent, type Message } from './children.js'

/**
 * A target region's API, counting the writes it answered 2xx. `identity` is the example API,
 * without the plugin, or with it (`plugin`) as a real region runs it: the plugin checks each
 * replay's signature and answers a repeat from its replay records in JetStream KV, over its own
 * NATS connection (which the WAN section routes through a delay proxy); `stub` answers every request 201
 * after `delayMs` (the slow target of the scaling run, the cheap target of the memory run).
 * It reports `done` when `expect` writes were answered 2xx: first arrival and last answer, on
 * this process's clock, give the throughput the target saw.
 */
export interface TargetChildConfig {
  mode: 'identity' | 'stub'
  region: string
  token?: string
  delayMs?: number
  expect: number
  /** Keep, per Idempotency-Key, the wall-clock time its write was answered (for end-to-end lag). */
  recordApplied?: boolean
  /** `identity` only: run the regionsync plugin, region `region`, on this NATS and namespace. */
  plugin?: { natsUrl: string, namespace: string, signingKey: string }
}

export interface TargetDone extends Message {
  type: 'done'
  count: number
  non2xx: number
  /** performance.now() of the first write's arrival and of the `expect`-th 2xx answer. */
  firstMs: number
  lastMs: number
}

async function main (): Promise<void> {
  const c = childConfig<TargetChildConfig>()
  let count = 0
  let non2xx = 0
  let firstMs = -1
  let lastMs = -1
  let doneSent = false
  const applied = new Map<string, number>()
  const arrived = (): void => { if (firstMs < 0) firstMs = performance.now() }
  const answered = (status: number, key: string | string[] | undefined, method: string | undefined): void => {
    if (method === 'GET') return
    if (status < 200 || status > 299) { non2xx++; return }
    count++
    if (c.recordApplied === true && typeof key === 'string') applied.set(key, performance.timeOrigin + performance.now())
    if (count >= c.expect && !doneSent) {
      lastMs = performance.now()
      doneSent = true
      const done: TargetDone = { type: 'done', count, non2xx, firstMs, lastMs }
      toParent(done)
    }
  }

  let url: string
  let close: () => Promise<void>
  if (c.mode === 'identity') {
    let nc: NatsConnection | null = null
    let spoolDir: string | null = null
    if (c.plugin !== undefined) {
      nc = await connectNats({ servers: c.plugin.natsUrl, name: `bench-target-${c.region}` })
      spoolDir = await mkdtemp(join(tmpdir(), `regionsync-bench-target-${c.region}-`))
    }
    const app = await buildIdentityApi({
      region: c.region,
      regionsync: c.plugin === undefined || nc === null || spoolDir === null
        ? false
        : { region: c.region, connection: nc, signingKey: c.plugin.signingKey, namespace: c.plugin.namespace, spool: { dir: spoolDir } },
      ...(c.token !== undefined ? { token: c.token } : {})
    })
    app.addHook('onRequest', async () => { arrived() })
    app.addHook('onResponse', async (request, reply) => { answered(reply.statusCode, request.headers['idempotency-key'], request.method) })
    url = await app.listen({ port: 0, host: '127.0.0.1' })
    close = async () => {
      await app.close()
      // The plugin does not close a connection it was given.
      if (nc !== null && !nc.isClosed()) await nc.close()
      if (spoolDir !== null) await rm(spoolDir, { recursive: true, force: true })
    }
  } else {
    const delayMs = c.delayMs ?? 0
    const server = createServer((req: IncomingMessage, res: ServerResponse) => {
      arrived()
      req.resume()
      req.on('end', () => {
        const answer = (): void => {
          res.writeHead(201, { 'content-type': 'application/json' }).end('{}', () => answered(201, req.headers['idempotency-key'], req.method))
        }
        if (delayMs > 0) setTimeout(answer, delayMs)
        else answer()
      })
    })
    server.keepAliveTimeout = 60_000
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
    close = async () => {
      await new Promise<void>((resolve) => { server.close(() => resolve()); server.closeAllConnections() })
    }
  }
  serveParent({
    progress: () => { toParent({ type: 'progress', count, non2xx, firstMs, nowMs: performance.now() }) },
    applied: () => { toParent({ type: 'applied', times: [...applied] }) }
  }, close)
  toParent({ type: 'ready', url })
}

main().catch(fail)
