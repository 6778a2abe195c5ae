import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { buildConduitApi } from '@regionsync/examples/conduit'
// Resolved from test/fastify4, whose package pins Fastify 4.
import Fastify, { type FastifyInstance } from 'fastify'
import { describe, expect, it } from 'vitest'
import { SIGNING_KEY, uniqueNamespace } from '../helpers/fixtures.js'
import { useNats } from '../helpers/harness.js'

const FASTIFY_VERSION = (createRequire(import.meta.url)('fastify/package.json') as { version: string }).version
const JWT_SECRET = randomBytes(32).toString('hex')
const h = useNats()

async function build (withPlugin: boolean): Promise<FastifyInstance> {
  const spoolDir = await mkdtemp(join(tmpdir(), 'regionsync-spool-'))
  const app = await buildConduitApi({
    region: 'us',
    jwtSecret: JWT_SECRET,
    fastify: Fastify as never,
    regionsync: withPlugin ? { region: 'us', connection: await h.connection(), signingKey: SIGNING_KEY, namespace: uniqueNamespace(), spool: { dir: spoolDir } } : false
  }) as unknown as FastifyInstance
  h.defer(async () => { await app.close(); await rm(spoolDir, { recursive: true, force: true }) })
  await app.ready()
  return app
}

/** Every handler style the app has, 2xx and 4xx, as a client would call them in order. */
async function session (app: FastifyInstance): Promise<Array<[string, number, unknown]>> {
  const out: Array<[string, number, unknown]> = []
  let token = ''
  const run = async (method: string, url: string, payload?: unknown, auth = true): Promise<any> => {
    const res = await app.inject({ method: method as 'GET', url, payload: payload as object, headers: auth && token !== '' ? { authorization: `Token ${token}` } : {} })
    const body = res.body === '' ? null : JSON.parse(res.body)
    // Tokens, slugs' random part and timestamps differ from run to run; the shape must not.
    out.push([`${method} ${url.replace(/-[0-9a-f]{6}\b/, '-*')}`, res.statusCode, JSON.parse(JSON.stringify(body ?? null, (k, v) => ['token', 'createdAt', 'updatedAt', 'slug'].includes(k) ? '*' : v))])
    return body
  }
  token = (await run('POST', '/api/users', { user: { username: 'alice', email: 'a@x.org', password: 'pw' } })).user.token
  await run('POST', '/api/users/login', { user: { email: 'a@x.org', password: 'bad' } })
  await run('POST', '/api/articles', { article: { title: 't', description: 'd', body: 'b' } }, false)
  const slug = (await run('POST', '/api/articles', { article: { title: 'Hello', description: 'd', body: 'b' } })).article.slug
  await run('POST', `/api/articles/${slug}/comments`, { comment: { body: 'hi' } })
  await run('POST', `/api/articles/${slug}/favorite`)
  await run('POST', '/api/articles/missing/favorite')
  await run('DELETE', '/api/articles/missing/comments/1')
  await run('DELETE', `/api/articles/${slug}/comments/99`)
  await run('DELETE', `/api/articles/${slug}/comments/1`)
  await run('POST', '/api/profiles/nobody/follow')
  await run('DELETE', '/api/articles/missing')
  await run('DELETE', `/api/articles/${slug}`)
  await run('GET', '/api/user')
  return out
}

describe('the Conduit example on Fastify 4', () => {
  it('runs on Fastify 4.29 without the plugin', async () => {
    expect(FASTIFY_VERSION).toMatch(/^4\./)
    const answers = await session(await build(false))
    expect(answers.map(([what, status]) => `${what} ${status}`)).toEqual([
      'POST /api/users 201', 'POST /api/users/login 422', 'POST /api/articles 401', 'POST /api/articles 201',
      'POST /api/articles/hello-*/comments 201', 'POST /api/articles/hello-*/favorite 200', 'POST /api/articles/missing/favorite 404',
      'DELETE /api/articles/missing/comments/1 404', 'DELETE /api/articles/hello-*/comments/99 404', 'DELETE /api/articles/hello-*/comments/1 204',
      'POST /api/profiles/nobody/follow 404', 'DELETE /api/articles/missing 404', 'DELETE /api/articles/hello-* 204', 'GET /api/user 200'
    ])
  })

  it('answers every request the same with the plugin', async () => {
    const without = await session(await build(false))
    expect(await session(await build(true))).toEqual(without)
  })
})
