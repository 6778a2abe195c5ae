import { mkdtemp, rm } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { jetstreamManager } from '@nats-io/jetstream'
import regionsync, { FASTIFY_RANGE } from '@regionsync/publisher'
import { names } from '@regionsync/shared'
import { request } from 'undici'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { SIGNING_KEY, uniqueNamespace } from '../helpers/fixtures.js'
import { useNats } from '../helpers/harness.js'

/**
 * The plugin never changes a response (issue 12): every handler style an API uses, on an app with
 * the plugin and the same app without it, over real HTTP; status, headers (the date aside) and
 * body must be the same, and the process must not see an error it would not have seen anyway.
 * Run on the oldest Fastify the plugin declares, the latest 4.x and the 5.x of the repository.
 */

type AnyFastify = (opts?: Record<string, unknown>) => any
const here = createRequire(import.meta.url)
const root = createRequire(fileURLToPath(new URL('../../package.json', import.meta.url)))
const VERSIONS: Array<{ name: string, factory: AnyFastify, version: string }> = [
  { name: 'oldest declared 4.x', factory: here('fastify-4-min') as AnyFastify, version: (here('fastify-4-min/package.json') as { version: string }).version },
  { name: 'latest 4.x', factory: here('fastify') as AnyFastify, version: (here('fastify/package.json') as { version: string }).version },
  { name: '5.x', factory: root('fastify') as AnyFastify, version: (root('fastify/package.json') as { version: string }).version }
]

const h = useNats()

/** Errors the process saw that nobody handled (ERR_HTTP_HEADERS_SENT from a second send lands here). */
const uncaught: unknown[] = []
const onUncaught = (err: unknown): void => { uncaught.push(err) }
beforeAll(() => {
  process.on('uncaughtException', onUncaught)
  process.on('unhandledRejection', onUncaught)
})
afterAll(() => {
  process.off('uncaughtException', onUncaught)
  process.off('unhandledRejection', onUncaught)
})

interface Case {
  name: string
  method: 'POST' | 'PUT' | 'DELETE' | 'PATCH'
  url: string
  body?: string
  headers?: Record<string, string>
}

/** Every handler style, registered the same way on both apps. */
function routes (app: any): void {
  app.post('/async-return', async (_req: any, reply: any) => { reply.code(201); return { id: 'r1' } })
  app.post('/async-send-no-return', async (_req: any, reply: any) => { reply.code(201).send({ id: 'r2' }) })
  app.post('/async-send-no-return-after-await', async (_req: any, reply: any) => { await sleep(2); reply.code(201).send({ id: 'r3' }) })
  app.post('/async-return-send', async (_req: any, reply: any) => { return reply.code(201).send({ id: 'r4' }) })
  app.post('/callback', (_req: any, reply: any) => { setImmediate(() => reply.code(201).send({ id: 'r5' })) })
  app.post('/hijack', (_req: any, reply: any) => {
    reply.hijack()
    reply.raw.writeHead(201, { 'content-type': 'text/plain' })
    reply.raw.end('raw answer')
  })
  app.post('/stream', async (_req: any, reply: any) => { reply.code(200).type('text/plain'); return Readable.from(['chunk one, ', 'chunk two']) })
  app.post('/throws-400', async () => { throw Object.assign(new Error('bad thing'), { statusCode: 400 }) })
  app.post('/throws-500', async () => { throw new Error('broken') })
  app.post('/callback-throws', () => { throw new Error('sync broken') })
  app.post('/validated', { schema: { body: { type: 'object', required: ['name'], properties: { name: { type: 'string' } } } } },
    async (_req: any, reply: any) => { reply.code(201).send({ id: 'v1' }) })
  app.post('/auth', {
    onRequest: async (req: any, reply: any) => {
      if (req.headers.authorization === undefined) { reply.code(401).send({ error: 'who are you' }); return reply }
    }
  }, async (_req: any, reply: any) => { reply.code(201).send({ id: 'a1' }) })
  app.post('/auth-callback', {
    onRequest: (req: any, reply: any, done: () => void) => {
      if (req.headers.authorization === undefined) { reply.code(401).send({ error: 'who are you' }); return }
      done()
    }
  }, async (_req: any, reply: any) => { reply.code(201).send({ id: 'a2' }) })
  app.delete('/things/:id', async (_req: any, reply: any) => { reply.code(204).send() })
  app.put('/things/:id', async (_req: any, reply: any) => { reply.code(200).type('application/json').send('{"id":"t1","ok":true}') })
  app.patch('/things/:id', async (_req: any, reply: any) => { reply.code(404).send({ message: 'no such thing' }) })
  app.post('/conflict', async (_req: any, reply: any) => { reply.code(409).send({ message: 'exists' }) })
  app.post('/not-found-sync', (_req: any, reply: any) => { reply.code(404).send({ message: 'nope' }) })
  app.post('/schema-strips-id', { schema: { response: { 201: { type: 'object', properties: { name: { type: 'string' } } } } } },
    async (_req: any, reply: any) => { reply.code(201).send({ id: 'hidden', name: 'ann' }) })
}

const json = { 'content-type': 'application/json' }
const CASES: Case[] = [
  { name: 'async handler returning its answer', method: 'POST', url: '/async-return', body: '{}', headers: json },
  { name: 'async handler calling reply.send() without returning it', method: 'POST', url: '/async-send-no-return', body: '{}', headers: json },
  { name: 'async handler calling reply.send() after an await, without returning it', method: 'POST', url: '/async-send-no-return-after-await', body: '{}', headers: json },
  { name: 'async handler returning reply.send()', method: 'POST', url: '/async-return-send', body: '{}', headers: json },
  { name: 'callback-style handler sending later', method: 'POST', url: '/callback', body: '{}', headers: json },
  { name: 'reply.hijack() and a raw answer', method: 'POST', url: '/hijack', body: '{}', headers: json },
  { name: 'a stream answer', method: 'POST', url: '/stream', body: '{}', headers: json },
  { name: 'an async handler throwing a 400', method: 'POST', url: '/throws-400', body: '{}', headers: json },
  { name: 'an async handler throwing a plain error', method: 'POST', url: '/throws-500', body: '{}', headers: json },
  { name: 'a sync handler throwing', method: 'POST', url: '/callback-throws', body: '{}', headers: json },
  { name: 'a schema validation error', method: 'POST', url: '/validated', body: '{"nom":"x"}', headers: json },
  { name: 'a body that passes the schema', method: 'POST', url: '/validated', body: '{"name":"x"}', headers: json },
  { name: 'an async onRequest auth hook answering early', method: 'POST', url: '/auth', body: '{}', headers: json },
  { name: 'the same hook letting the request through', method: 'POST', url: '/auth', body: '{}', headers: { ...json, authorization: 'Bearer t' } },
  { name: 'a callback onRequest auth hook answering early', method: 'POST', url: '/auth-callback', body: '{}', headers: json },
  { name: 'a 204 sent without returning it', method: 'DELETE', url: '/things/t1' },
  { name: 'a JSON string answer', method: 'PUT', url: '/things/t1', body: '{"a":1}', headers: json },
  { name: 'a 404 sent without returning it', method: 'PATCH', url: '/things/t9', body: '{}', headers: json },
  { name: 'a 409 sent without returning it', method: 'POST', url: '/conflict', body: '{}', headers: json },
  { name: 'a 404 sent by a sync handler', method: 'POST', url: '/not-found-sync', body: '{}', headers: json },
  { name: 'malformed JSON', method: 'POST', url: '/async-return', body: '{"a":', headers: json },
  { name: 'an unknown route', method: 'POST', url: '/nowhere', body: '{}', headers: json },
  { name: 'a response schema that drops the id', method: 'POST', url: '/schema-strips-id', body: '{}', headers: json }
]

/** Headers that differ between any two answers. */
const VOLATILE = new Set(['date', 'keep-alive', 'connection'])

async function answer (url: string, c: Case): Promise<{ status: number, headers: Record<string, unknown>, body: string }> {
  const res = await request(url + c.url, { method: c.method, headers: c.headers ?? {}, body: c.body })
  const headers: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(res.headers)) if (!VOLATILE.has(k)) headers[k] = v
  return { status: res.statusCode, headers, body: await res.body.text() }
}

describe.each(VERSIONS)('the plugin never changes a response: Fastify $version ($name)', ({ factory, version }) => {
  async function start (withPlugin: boolean): Promise<{ url: string, ns: string }> {
    const app = factory({ logger: false })
    h.defer(async () => await app.close())
    const ns = uniqueNamespace()
    if (withPlugin) {
      const spoolDir = await mkdtemp(join(tmpdir(), 'regionsync-spool-'))
      h.defer(async () => await rm(spoolDir, { recursive: true, force: true }))
      await app.register(regionsync, { region: 'us', connection: await h.connection(), signingKey: SIGNING_KEY, namespace: ns, spool: { dir: spoolDir } })
    }
    routes(app)
    expect(app.version).toBe(version)
    return { url: await app.listen({ port: 0, host: '127.0.0.1' }), ns }
  }

  it('answers every handler style exactly as the same app without the plugin, and the process sees no error', async () => {
    const bare = await start(false)
    const covered = await start(true)
    for (const c of CASES) {
      const before = uncaught.length
      const without = await answer(bare.url, c)
      const withPlugin = await answer(covered.url, c)
      expect({ case: c.name, ...withPlugin }).toEqual({ case: c.name, ...without })
      // A second send would fail after the first answer left; give it the time to.
      await sleep(20)
      expect(uncaught.slice(before), c.name).toEqual([])
    }
    // The 2xx writes the plugin can see were published (a hijacked reply and a stream's aside).
    const nc = await h.connection()
    const jsm = await jetstreamManager(nc)
    const stored = (await jsm.streams.info(names(covered.ns).eventStream)).state.messages
    expect(stored).toBe(11)
  })
})

describe('the Fastify versions the plugin declares', () => {
  it(`refuses to register on a Fastify older than ${FASTIFY_RANGE}, naming the version found`, async () => {
    const tooOld = here('fastify-4-too-old') as AnyFastify
    const app = tooOld({ logger: false })
    h.defer(async () => await app.close().catch(() => undefined))
    const err = await (async () => {
      try {
        await app.register(regionsync, { region: 'us', connection: await h.connection(), signingKey: SIGNING_KEY, namespace: uniqueNamespace(), spool: false })
        await app.ready()
      } catch (e) {
        return e as Error
      }
      return undefined
    })()
    expect(err?.message).toContain('4.15.0')
    expect(err?.message).toContain(FASTIFY_RANGE)
  })
})
