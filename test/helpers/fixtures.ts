import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { NatsConnection } from '@nats-io/transport-node'
import { buildIdentityApi, type IdentityState, type IdentityStore } from '@regionsync/examples'
import { Replicator, type ReplicatorOptions } from '@regionsync/replicator'
import { connectNats, createLogger, type Logger } from '@regionsync/shared'
import type { FastifyInstance } from 'fastify'
import { request } from 'undici'

export const SIGNING_KEY = randomBytes(32).toString('hex')

/** Unique per test, so streams, consumers and buckets never collide. */
export function uniqueNamespace (): string {
  return `t${randomBytes(5).toString('hex')}`
}

export const silentLogger: Logger = createLogger({ level: process.env.TEST_LOG_LEVEL ?? 'silent' })

export async function connect (url: string): Promise<NatsConnection> {
  return await connectNats({ servers: url })
}

export interface RunningApi {
  app: FastifyInstance
  url: string
}

/** `store`: the region's data, to share with a second app (a door behind regionsync's back). */
export async function startIdentityApi (opts: { region: string, namespace: string, nc?: NatsConnection, token?: string, plugin?: boolean, store?: IdentityStore }): Promise<RunningApi> {
  const spoolDir = await mkdtemp(join(tmpdir(), 'regionsync-spool-'))
  const app = await buildIdentityApi({
    region: opts.region,
    ...(opts.token !== undefined ? { token: opts.token } : {}),
    ...(opts.store !== undefined ? { store: opts.store } : {}),
    regionsync: opts.plugin === false || opts.nc === undefined
      ? false
      : { region: opts.region, connection: opts.nc, signingKey: SIGNING_KEY, namespace: opts.namespace, spool: { dir: spoolDir } }
  })
  app.addHook('onClose', async () => await rm(spoolDir, { recursive: true, force: true }))
  const url = await app.listen({ port: 0, host: '127.0.0.1' })
  return { app, url }
}

export async function state (url: string): Promise<IdentityState> {
  const res = await request(`${url}/_state`)
  return await res.body.json() as IdentityState
}

export async function call (url: string, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number, body: any }> {
  const res = await request(url + path, {
    method: method as 'POST',
    headers: body === undefined ? headers : { 'content-type': 'application/json', ...headers },
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  const text = await res.body.text()
  return { status: res.statusCode, body: text === '' ? null : JSON.parse(text) }
}

export async function waitFor<T> (what: string, fn: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs
  let last: unknown
  while (Date.now() < deadline) {
    try {
      const v = await fn()
      if (v !== undefined && v !== false) return v
    } catch (err) {
      last = err
    }
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  throw new Error(`timed out waiting for ${what}${last === undefined ? '' : `: ${String(last)}`}`)
}

/** A replicator with the tests' signing key, a silent logger and a fast retry schedule. */
export async function startReplicator (
  connection: NatsConnection,
  options: Pick<ReplicatorOptions, 'region' | 'namespace' | 'target'> & Partial<ReplicatorOptions>
): Promise<Replicator> {
  return await Replicator.start({ signingKey: SIGNING_KEY, logger: silentLogger, retry: { baseDelayMs: 50, maxDelayMs: 500 }, connection, ...options })
}

/** Seeded randomness (mulberry32), so a failing run can be rebuilt from the seed it reports. */
export function prng (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}
