import type { NatsConnection } from '@nats-io/transport-node'
import { afterAll, afterEach, beforeAll } from 'vitest'
import { connect } from './fixtures.js'
import { NatsServer } from './nats-server.js'

export interface Harness {
  /** The file's own nats-server, started before its tests. */
  readonly nats: NatsServer
  /** Runs `fn` after the current test, last registered first. */
  defer: (fn: () => Promise<unknown>) => void
  /** A connection to the file's server, closed after the test. */
  connection: () => Promise<NatsConnection>
}

/** One real nats-server per test file, and per-test cleanup of everything a test opened. */
export function useNats (): Harness {
  let server: NatsServer | undefined
  const cleanup: Array<() => Promise<unknown>> = []
  beforeAll(async () => { server = await NatsServer.start() })
  afterAll(async () => { await server?.stop() })
  afterEach(async () => {
    for (const fn of cleanup.splice(0).reverse()) await fn()
  })
  const h: Harness = {
    get nats () {
      if (server === undefined) throw new Error('nats-server is not started yet')
      return server
    },
    defer: (fn) => { cleanup.push(fn) },
    connection: async () => {
      const nc = await connect(h.nats.url)
      cleanup.push(async () => { if (!nc.isClosed()) await nc.close() })
      return nc
    }
  }
  return h
}
