import { randomBytes } from 'node:crypto'
import { jetstreamManager } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import {
  DEFAULT_PARTITIONS, connectNats, createEvent, encodeEvent, ensureDlqStream, ensureEventStream, names, parseStreamSettings,
  type RegionsyncEvent
} from '@regionsync/shared'
import { EventPublisher } from '../../test/helpers/events.js'
import type { BenchContext } from './context.js'
import { uniqueNamespace } from './util.js'

/** Publishes this many events at once and awaits their acks together. */
export const PUBLISH_BATCH = 1000

/** What a client of the example API sends to create a user: about 200 bytes of JSON. */
export function userBody (i: number): string {
  return JSON.stringify({
    user: {
      name: `bench user ${String(i).padStart(8, '0')}`,
      email: `bench.user.${String(i).padStart(8, '0')}@example.org`,
      password: `pw-${randomBytes(24).toString('hex')}`,
      enabled: true
    }
  })
}

/**
 * The event the plugin writes for `POST /v3/users` answered 201 with a server-assigned id: keyed on
 * the user, the id to be injected into the replayed body (the example API's default).
 */
export function createUserEvent (i: number): RegionsyncEvent {
  const id = randomBytes(16).toString('hex')
  return createEvent({
    origin: 'us',
    method: 'POST',
    path: '/v3/users',
    contentType: 'application/json',
    body: Buffer.from(userBody(i)),
    resource: `/v3/users/${id}`,
    created: { id, field: 'user.id', mode: 'inject' }
  })
}

export interface Backlog {
  events: number
  /** Mean sizes in bytes: the request body, and the event as stored (JSON envelope). */
  bodyBytes: number
  eventBytes: number
  publishSeconds: number
}

/**
 * Puts `count` signed events on the event stream the way the plugin does (test/helpers/events.ts),
 * creating the stream first with `partitions` (the default 16 unless given). Publishes are
 * pipelined: a batch of PUBLISH_BATCH is sent at once and its acks awaited together.
 */
export async function publishBacklog (natsUrl: string, namespace: string, signingKey: string, count: number, onProgress: (done: number) => void, partitions = DEFAULT_PARTITIONS): Promise<Backlog> {
  const nc: NatsConnection = await connectNats({ servers: natsUrl, name: 'bench-backlog' })
  try {
    const jsm = await jetstreamManager(nc)
    const n = names(namespace)
    const settings = parseStreamSettings({ partitions })
    await ensureEventStream(nc, jsm, n, settings)
    await ensureDlqStream(jsm, n, settings.replicas)
    const publisher = new EventPublisher(nc, namespace, partitions, signingKey)
    let bodyBytes = 0
    let eventBytes = 0
    const started = performance.now()
    for (let done = 0; done < count;) {
      const batch = Math.min(PUBLISH_BATCH, count - done)
      const events = Array.from({ length: batch }, (_, k) => createUserEvent(done + k))
      for (const e of events) {
        bodyBytes += Buffer.byteLength(e.body ?? '')
        eventBytes += encodeEvent(e).length
      }
      await Promise.all(events.map(async (e) => await publisher.publish(e)))
      done += batch
      onProgress(done)
    }
    const publishSeconds = (performance.now() - started) / 1000
    const info = await jsm.streams.info(n.eventStream)
    if (info.state.messages !== count) throw new Error(`the stream holds ${info.state.messages} events, ${count} were published`)
    return { events: count, bodyBytes: Math.round(bodyBytes / count), eventBytes: Math.round(eventBytes / count), publishSeconds }
  } finally {
    await nc.close()
  }
}

/**
 * A section's backlog: `count` events on a namespace of its own (named after `namespacePrefix`),
 * the publishing shown as the step `${step}: publishing a backlog of N events`.
 */
export async function sectionBacklog (ctx: BenchContext, natsUrl: string, o: { step: string, namespacePrefix: string, count: number }): Promise<{ namespace: string, backlog: Backlog }> {
  const namespace = uniqueNamespace(o.namespacePrefix)
  ctx.progress.step(`${o.step}: publishing a backlog of ${o.count.toLocaleString('en-US')} events`)
  const backlog = await publishBacklog(natsUrl, namespace, ctx.signingKey, o.count, (done) => ctx.progress.update(`${done.toLocaleString('en-US')} published`))
  return { namespace, backlog }
}
