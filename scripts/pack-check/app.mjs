// Run by scripts/pack-check.sh inside an empty project where only the two packed tarballs and
// fastify 5 are installed: the README's install section, end to end. Two regions (us, eu), each a
// Fastify 5 API with the plugin, and the installed `regionsync replicate` for eu; a create, a
// patch and a delete in us must reach eu with the same id. Exits 0 when they do.
import { spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import Fastify from 'fastify'
import regionsync from '@regionsync/publisher'

const nats = process.env.NATS_URL
const signingKey = randomUUID() + randomUUID()
const namespace = `packcheck_${Date.now()}`

async function api (region) {
  const things = new Map()
  const app = Fastify()
  await app.register(regionsync, { region, nats: { servers: nats }, signingKey, namespace, spool: { dir: `.spool-${region}` } })
  app.post('/things', async (request, reply) => {
    const id = request.regionsync?.createdId ?? randomUUID()
    things.set(id, { id, ...request.body })
    return await reply.code(201).send(things.get(id))
  })
  app.patch('/things/:id', async (request, reply) => {
    const thing = things.get(request.params.id)
    if (thing === undefined) return await reply.code(404).send()
    Object.assign(thing, request.body)
    return thing
  })
  app.delete('/things/:id', async (request, reply) => {
    things.delete(request.params.id)
    return await reply.code(204).send()
  })
  const url = await app.listen({ port: 0, host: '127.0.0.1' })
  return { app, url, things }
}

async function waitFor (what, check) {
  for (const end = Date.now() + 20_000; Date.now() < end; await new Promise((resolve) => setTimeout(resolve, 100))) {
    if (check()) return
  }
  throw new Error(`timed out waiting for ${what}`)
}

const us = await api('us')
const eu = await api('eu')
const replicator = spawn('node_modules/.bin/regionsync', ['replicate', '--region', 'eu', '--target', eu.url, '--nats', nats, '--namespace', namespace, '--metrics-port', '0'], {
  env: { ...process.env, REGIONSYNC_SIGNING_KEY: signingKey },
  stdio: ['ignore', 'ignore', 'inherit']
})
const exited = new Promise((resolve) => replicator.once('exit', (code, signal) => resolve(code ?? signal)))
try {
  const send = async (method, path, body) => {
    const res = await fetch(us.url + path, { method, headers: body === undefined ? {} : { 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) })
    if (!res.ok) throw new Error(`${method} ${path}: ${res.status}`)
    return res.status === 204 ? null : await res.json()
  }
  const created = await send('POST', '/things', { name: 'ann' })
  await waitFor('the create in eu with the same id', () => eu.things.get(created.id)?.name === 'ann')
  await send('PATCH', `/things/${created.id}`, { name: 'bob' })
  await waitFor('the patch in eu', () => eu.things.get(created.id)?.name === 'bob')
  await send('DELETE', `/things/${created.id}`)
  await waitFor('the delete in eu', () => !eu.things.has(created.id))
  console.log(`pack-check app: create, patch and delete of ${created.id} replicated us -> eu with the same id`)
} finally {
  replicator.kill('SIGTERM')
  const code = await exited
  if (code !== 0) console.error(`regionsync replicate exited ${code} on SIGTERM`)
  await us.app.close()
  await eu.app.close()
}
