// Type test, checked by `tsc -p test` (npm test runs it first): the plugin registers on a Fastify 4
// app without a cast. `fastify` resolves here to test/fastify4's pinned 4.x.
import regionsync from '@regionsync/publisher'
import Fastify from 'fastify'

export async function registersOnFastify4 (): Promise<void> {
  const app = Fastify()
  await app.register(regionsync, { region: 'us', nats: { servers: 'nats://127.0.0.1:4222' }, signingKey: 'a-signing-key-of-at-least-32-characters!!' })
  app.post('/v3/users', { config: { regionsync: { resource: () => ({ type: '/v3/users', id: 'u1' }) } } }, async () => ({ user: { id: 'u1' } }))
  // Wrong options are still refused at compile time.
  // @ts-expect-error region is required
  await app.register(regionsync, { signingKey: 'a-signing-key-of-at-least-32-characters!!' })
}
