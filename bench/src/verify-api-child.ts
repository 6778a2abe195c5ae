import { buildIdentityApi, createIdentityStore } from '@regionsync/examples'
import { childConfig, fail, serveParent, toParent } from './children.js'

/**
 * One region's copy of the example identity API for the verify run, without the plugin (verify
 * only reads), filled straight into its store with `resources` users, then the planted
 * differences: `missing` users removed, `extra` users added, `different` users' email changed.
 */
export interface VerifyApiChildConfig {
  region: string
  resources: number
  missing: number
  extra: number
  different: number
}

/** Ids spread over the id space, so the planted differences are not all on one page. */
export function benchUserId (i: number): string {
  return `u${i.toString().padStart(8, '0')}`
}

async function main (): Promise<void> {
  const c = childConfig<VerifyApiChildConfig>()
  const store = createIdentityStore()
  for (let i = 0; i < c.resources; i++) {
    const id = benchUserId(i)
    store.users.set(id, { id, name: `user ${i}`, email: `user${i}@example.org`, passwordHash: null, enabled: i % 3 !== 0 })
  }
  const step = (n: number): number => Math.max(1, Math.floor(c.resources / (n + 1)))
  for (let k = 1; k <= c.missing; k++) store.users.delete(benchUserId(k * step(c.missing)))
  for (let k = 1; k <= c.different; k++) {
    const user = store.users.get(benchUserId(k * step(c.different) + 1))
    if (user !== undefined) user.email = `changed${k}@example.org`
  }
  for (let k = 1; k <= c.extra; k++) {
    const id = `${benchUserId(k * step(c.extra))}x`
    store.users.set(id, { id, name: 'stowaway', email: null, passwordHash: null, enabled: true })
  }
  store.revision++
  const app = await buildIdentityApi({ region: c.region, regionsync: false, store })
  const url = await app.listen({ port: 0, host: '127.0.0.1' })
  serveParent({}, async () => await app.close())
  toParent({ type: 'ready', url })
}

main().catch(fail)
