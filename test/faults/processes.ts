import { request } from 'undici'
import { RegionsyncProcess } from '../helpers/child-process.js'
import { SIGNING_KEY, waitFor } from '../helpers/fixtures.js'

/** Everything a replicator printed is kept up to this, for failure messages and the credential scan. */
const OUTPUT_KEEP_CHARS = 8 * 1024 * 1024

/** One `regionsync replicate` instance, as an operator runs it; a fault may kill -9 it and start it again. */
export class ReplicatorProcess extends RegionsyncProcess {
  constructor (opts: { region: string, target: string, token: string, servers: string[], namespace: string, timeoutMs: number, index: number, extraArgs?: string[] }) {
    super(['replicate',
      '--region', opts.region, '--target', opts.target, '--nats', opts.servers.join(','),
      '--signing-key', SIGNING_KEY, '--target-token', opts.token, '--namespace', opts.namespace,
      '--timeout-ms', String(opts.timeoutMs), '--metrics-port', '0', '--metrics-host', '127.0.0.1',
      ...(opts.extraArgs ?? [])
    ], {
      label: `replicator ${opts.region}#${opts.index}`,
      env: { LOG_LEVEL: process.env.FAULT_LOG_LEVEL ?? 'info' },
      keepChars: OUTPUT_KEEP_CHARS
    })
  }

  /** Starts it and waits until it says it is ready (connected and consuming). */
  async start (): Promise<void> {
    this.spawn()
    const port = await this.metricsPort(30_000)
    await waitFor(`${this.label} /readyz`, async () => {
      const res = await request(`http://127.0.0.1:${port}/readyz`)
      await res.body.dump()
      return res.statusCode === 200
    }, 30_000)
  }
}
