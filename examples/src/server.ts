import { buildIdentityApi } from './identity-api.js'

/*
 * The example API as a process, for docker-compose: one region's copy, with the plugin on.
 * REGION, PORT, NATS_URL, REGIONSYNC_SIGNING_KEY, REGIONSYNC_NAMESPACE, REGIONSYNC_SPOOL_DIR and API_TOKEN
 * configure it.
 */
const region = process.env.REGION ?? 'us'
const port = Number(process.env.PORT ?? 3000)
const app = await buildIdentityApi({
  region,
  token: process.env.API_TOKEN === '' ? undefined : process.env.API_TOKEN,
  logger: { level: process.env.LOG_LEVEL ?? 'info' },
  regionsync: {
    region,
    nats: { servers: (process.env.NATS_URL ?? 'nats://127.0.0.1:4222').split(',') },
    signingKey: process.env.REGIONSYNC_SIGNING_KEY,
    dev: process.env.REGIONSYNC_SIGNING_KEY === undefined && process.env.NODE_ENV !== 'production',
    metricsRoute: '/metrics',
    ...(process.env.REGIONSYNC_NAMESPACE !== undefined ? { namespace: process.env.REGIONSYNC_NAMESPACE } : {}),
    ...(process.env.REGIONSYNC_SPOOL_DIR !== undefined ? { spool: { dir: process.env.REGIONSYNC_SPOOL_DIR } } : {})
  }
})
await app.listen({ port, host: process.env.HOST ?? '0.0.0.0' })
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.once(signal, () => { app.close().then(() => process.exit(0), () => process.exit(1)) })
}
