import { jetstream, type JetStreamClient, type PubAck } from '@nats-io/jetstream'
import { headers as natsHeaders, type NatsConnection } from '@nats-io/transport-node'
import type { Registry } from 'prom-client'
import {
  EVENT_SIGNATURE_HEADER, createEvent, createSigner, encodeEvent, names, partitionOf,
  type NewEventInput, type RegionsyncEvent
} from '@regionsync/shared'

/** An event as the publisher would write it, with test defaults: a JSON POST from region "us". */
export function newEvent (input: Partial<Omit<NewEventInput, 'body'>> & { body?: Buffer | string | null } = {}): RegionsyncEvent {
  const body = input.body === undefined ? Buffer.from('{"user":{"name":"x"}}') : typeof input.body === 'string' ? Buffer.from(input.body) : input.body
  return createEvent({
    origin: 'us',
    method: 'POST',
    path: '/v3/users',
    contentType: 'application/json',
    resource: 'users',
    ...input,
    body
  })
}

export interface RawPublishOptions {
  /** Decides the subject: partition of this key. */
  resource: string
  /** Last token of the subject. @default 'us' */
  origin?: string
  /** Signature header: a key to sign with, or null for none. @default the publisher's key */
  signWith?: string | null
  /** Exact signature header value, overriding `signWith`. */
  signature?: string
  msgID?: string
}

/** Puts events on the event stream exactly the way the Fastify plugin does. */
export class EventPublisher {
  readonly #js: JetStreamClient
  readonly #namespace: string
  readonly #partitions: number
  readonly #signingKey: string

  constructor (nc: NatsConnection, namespace: string, partitions: number, signingKey: string) {
    this.#js = jetstream(nc)
    this.#namespace = namespace
    this.#partitions = partitions
    this.#signingKey = signingKey
  }

  /** Publishes a signed event with `Nats-Msg-Id` = its id, unless told otherwise. */
  async publish (event: RegionsyncEvent, opts: Partial<RawPublishOptions> = {}): Promise<PubAck> {
    return await this.publishRaw(encodeEvent(event), { resource: event.resource, origin: event.origin, msgID: event.id, ...opts })
  }

  /** Publishes arbitrary bytes as an event (for malformed or forged events). */
  async publishRaw (payload: Uint8Array, opts: RawPublishOptions): Promise<PubAck> {
    const h = natsHeaders()
    const key = opts.signWith === undefined ? this.#signingKey : opts.signWith
    if (opts.signature !== undefined) h.set(EVENT_SIGNATURE_HEADER, opts.signature)
    else if (key !== null) h.set(EVENT_SIGNATURE_HEADER, createSigner(key).signEvent(payload))
    const subject = names(this.#namespace).eventSubject(partitionOf(opts.resource, this.#partitions), opts.origin ?? 'us')
    return await this.#js.publish(subject, payload, { headers: h, ...(opts.msgID !== undefined ? { msgID: opts.msgID } : {}) })
  }
}

/**
 * Value of one sample, read from a prom-client registry in this process; 0 when the series has no
 * sample yet, as for a counter never incremented. A histogram's `<name>_count` and `<name>_sum` are
 * read by those names.
 */
export async function registryValue (registry: Registry, name: string, labels: Record<string, string> = {}): Promise<number> {
  const base = name.replace(/_(count|sum|bucket)$/, '')
  const metric = registry.getSingleMetric(name) ?? registry.getSingleMetric(base)
  if (metric === undefined) return 0
  const { values } = await metric.get()
  const sampleName = (v: object): string => 'metricName' in v && typeof v.metricName === 'string' ? v.metricName : name
  const sample = values.find((v) => sampleName(v) === name && Object.entries(labels).every(([k, want]) => String(v.labels[k]) === want))
  return sample?.value ?? 0
}

/**
 * Value of one sample in Prometheus text output, for what another process serves on `/metrics`
 * (in this process, registryValue reads the registry itself); 0 when the series has no sample yet.
 */
export function metricValue (text: string, name: string, labels: Record<string, string> = {}): number {
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})?\s+(\S+)/.exec(line)
    if (m === null || m[1] !== name) continue
    const have = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((l) => [l[1], l[2]]))
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(m[3])
  }
  return 0
}
