import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { NatsConnection } from '@nats-io/transport-node'
import { buildIdentityApi, type IdentityState } from '@regionsync/examples'
import type { RegionsyncPluginOptions } from '@regionsync/publisher'
import { IDEMPOTENCY_KEY_HEADER } from '@regionsync/shared'
import type { FastifyInstance } from 'fastify'
import { request } from 'undici'
import { registryValue } from '../helpers/events.js'
import { SIGNING_KEY } from '../helpers/fixtures.js'

/** One replay as a region's API answered it. */
export interface AnsweredReplay {
  /** The client's write id (`?w=`), carried in the replayed query; null when absent. */
  wid: string | null
  /** Its Idempotency-Key: the event id. */
  eventId: string
  method: string
  url: string
  status: number
  /**
   * The handler ran: a 2xx with this set is the write applied with effect. A duplicate the plugin's
   * replay guard answered from its record (the handler did not run) has it false.
   */
  handled: boolean
  /** When the answer was sent (ms since epoch, this process's clock, as the checker's). */
  at: number
}

/**
 * A region's copy of the example identity API, with the regionsync plugin (replay guard on) and the
 * region's own write token, that logs every replay it answers: which client write it was, whether
 * its handler ran, and when. The log is the "applied" record the checker reads.
 */
export class RegionApi {
  readonly region: string
  readonly app: FastifyInstance
  readonly url: string
  readonly replays: AnsweredReplay[]
  readonly #spoolDir: string

  private constructor (region: string, app: FastifyInstance, url: string, replays: AnsweredReplay[], spoolDir: string) {
    this.region = region
    this.app = app
    this.url = url
    this.replays = replays
    this.#spoolDir = spoolDir
  }

  static async start (opts: {
    region: string
    connection: NatsConnection
    namespace: string
    token: string
    plugin?: Partial<RegionsyncPluginOptions>
  }): Promise<RegionApi> {
    const spoolDir = await mkdtemp(join(tmpdir(), `regionsync-faults-${opts.region}-`))
    const app = await buildIdentityApi({
      region: opts.region,
      token: opts.token,
      regionsync: {
        region: opts.region,
        connection: opts.connection,
        signingKey: SIGNING_KEY,
        namespace: opts.namespace,
        spool: { dir: spoolDir },
        ...opts.plugin
      }
    })
    const replays: AnsweredReplay[] = []
    // App hooks run before the plugin's route hooks. The plugin answers a duplicate replay from its
    // record with the recorded bytes (a Buffer); every handler of the identity API sends an object
    // or nothing, which reaches onSend serialized (a string) or undefined.
    app.addHook('onSend', async (req, reply, payload) => {
      const eventId = req.headers[IDEMPOTENCY_KEY_HEADER]
      if (typeof eventId !== 'string') return payload
      const w = (req.query as Record<string, unknown> | undefined)?.w
      replays.push({
        wid: typeof w === 'string' ? w : null,
        eventId,
        method: req.method,
        url: req.url,
        status: reply.statusCode,
        // The plugin's guard marks every answer it gives without the handler (a duplicate, an older
        // event of the resource, a repeat still running) with x-regionsync-outcome.
        handled: !Buffer.isBuffer(payload) && reply.statusCode !== 429 && reply.getHeader('x-regionsync-outcome') === undefined,
        at: Date.now()
      })
      return payload
    })
    const url = await app.listen({ port: 0, host: '127.0.0.1' })
    return new RegionApi(opts.region, app, url, replays, spoolDir)
  }

  async state (): Promise<IdentityState> {
    return await stateOf(this.url)
  }

  /** Replays whose handler ran with a 2xx, by the plugin's own count. */
  async pluginApplied (): Promise<number> {
    return await registryValue(this.app.regionsync.registry, 'regionsync_replays_received_total', { region: this.region, outcome: 'applied' })
  }

  async close (): Promise<void> {
    await this.app.close()
    await rm(this.#spoolDir, { recursive: true, force: true })
  }
}

export async function stateOf (url: string): Promise<IdentityState> {
  const res = await request(`${url}/_state`, { headersTimeout: 10_000, bodyTimeout: 10_000 })
  if (res.statusCode !== 200) {
    await res.body.dump()
    throw new Error(`GET ${url}/_state answered ${res.statusCode}`)
  }
  return await res.body.json() as IdentityState
}
