import { connect, type NatsConnection, type NodeConnectionOptions } from '@nats-io/transport-node'
import { ErrorCode, RegionsyncError } from './errors.js'

export const DEFAULT_NATS_URL = 'nats://127.0.0.1:4222'

export type NatsConnectOptions = Partial<NodeConnectionOptions> & { servers?: string | string[] }

/**
 * Connects with settings fit for a long-running service: reconnect forever, and fail the first
 * connect fast unless asked to wait, so a missing server is reported instead of hanging.
 */
export async function connectNats (opts: NatsConnectOptions = {}): Promise<NatsConnection> {
  return await connect({
    maxReconnectAttempts: -1,
    reconnectTimeWait: 500,
    ...opts,
    servers: opts.servers ?? DEFAULT_NATS_URL
  })
}

/**
 * Server features regionsync can be asked to use that older servers accept but silently ignore
 * (measured on 2.9.10). A setting that needs one is refused at setup instead of doing nothing.
 */
export const SERVER_FEATURES = {
  streamCompression: '2.10.0',
  streamMetadata: '2.10.0',
  consumerFilterSubjects: '2.10.0',
  perMessageTtl: '2.11.0'
} as const
export type ServerFeature = keyof typeof SERVER_FEATURES

export function serverVersion (nc: NatsConnection): [number, number, number] {
  const v = nc.info?.version ?? '0.0.0'
  const m = /^(\d+)\.(\d+)\.(\d+)/.exec(v)
  return m === null ? [0, 0, 0] : [Number(m[1]), Number(m[2]), Number(m[3])]
}

export function serverSupports (nc: NatsConnection, feature: ServerFeature): boolean {
  const need = SERVER_FEATURES[feature].split('.').map(Number)
  const have = serverVersion(nc)
  for (let i = 0; i < 3; i++) {
    const a = have[i] as number
    const b = need[i] as number
    if (a !== b) return a > b
  }
  return true
}

/** Throws when the connected server would silently ignore a setting that needs `feature`. */
export function requireServerFeature (nc: NatsConnection, feature: ServerFeature, setting: string): void {
  if (!serverSupports(nc, feature)) {
    throw new RegionsyncError(ErrorCode.UnsupportedServer,
      `${setting} needs nats-server ${SERVER_FEATURES[feature]} or newer; this server is ${nc.info?.version ?? 'unknown'} and would silently ignore it`)
  }
}

/** Largest message the server accepts, in bytes. */
export function serverMaxPayload (nc: NatsConnection): number {
  return nc.info?.max_payload ?? 1024 * 1024
}
