import { JetStreamApiCodes, JetStreamApiError, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream'
import { headers as natsHeaders } from '@nats-io/transport-node'
import { EVENT_SIGNATURE_HEADER, createEvent, encodeEvent, partitionOf, type Names, type RegionsyncEvent, type Signer } from '@regionsync/shared'
import { fillTemplate, type TypeConfig } from './config.js'
import { omit } from './normalise.js'
import { lastSubjectSeq } from './positions.js'

/**
 * Attempts at publishing one repair while the source keeps writing the same partition. Each lost
 * race means another event of the partition landed between reading the source and publishing;
 * the next attempt reads the source again.
 */
const MAX_REPAIR_ATTEMPTS = 5

export type RepairAction = 'put' | 'delete'

export interface RepairOutcome {
  type: string
  id: string
  /** What the source's state called for; null when the type cannot be repaired that way. */
  action: RepairAction | null
  method: 'PUT' | 'DELETE' | null
  path: string | null
  resource: string
  /** `published`, `would-publish` (dry run), `not-repairable`, or `failed` (the detail says why). */
  outcome: 'published' | 'would-publish' | 'not-repairable' | 'failed'
  eventId: string | null
  /** Stream sequence of the published repair. */
  seq: number | null
  detail: string
}

export interface RepairContext {
  js: JetStreamClient
  jsm: JetStreamManager
  names: Names
  partitions: number
  signer: Signer
  /** The source region: a repair is an event of the source, so every other region applies it. */
  source: string
}

/**
 * A repair is an ordinary event of the source region, marked `repair: true`: a PUT of the
 * source's current representation, or a DELETE when the source no longer has the resource. It is
 * keyed on the resource key the plugin uses for the resource, so it lands in the same partition
 * as the resource's other events and is applied in order with them; signed, deduplicated by its
 * Nats-Msg-Id, recorded and counted in lag like any event.
 *
 * Never stale: the publish expects the last sequence on the resource's subject to be what it was
 * before the source was read, so an event the source published in between (a write the read may
 * not have seen) makes JetStream refuse the repair, and it is built again from a fresh read.
 */
export async function publishRepair (
  ctx: RepairContext,
  type: TypeConfig,
  id: string,
  readSource: () => Promise<unknown>,
  dryRun: boolean
): Promise<RepairOutcome> {
  const resource = fillTemplate(type.resourceKey, id)
  const subject = ctx.names.eventSubject(partitionOf(resource, ctx.partitions), ctx.source)
  const base = { type: type.name, id, resource }
  let lost = 0
  for (let attempt = 1; attempt <= MAX_REPAIR_ATTEMPTS; attempt++) {
    const expected = await lastSubjectSeq(ctx.jsm, ctx.names, subject)
    const current = await readSource()
    const event = repairEvent(ctx.source, type, id, resource, current)
    if (event === null) {
      const action: RepairAction = current === null ? 'delete' : 'put'
      return { ...base, action, method: null, path: null, outcome: 'not-repairable', eventId: null, seq: null, detail: `${type.name} has no repair.${action} in the verify config` }
    }
    const action: RepairAction = event.method === 'PUT' ? 'put' : 'delete'
    const planned = { ...base, action, method: event.method as 'PUT' | 'DELETE', path: event.path }
    if (dryRun) return { ...planned, outcome: 'would-publish', eventId: null, seq: null, detail: '' }
    const data = encodeEvent(event)
    const h = natsHeaders()
    h.set(EVENT_SIGNATURE_HEADER, ctx.signer.signEvent(data))
    try {
      const ack = await ctx.js.publish(subject, data, { msgID: event.id, headers: h, expect: { lastSubjectSequence: expected } })
      return { ...planned, outcome: 'published', eventId: event.id, seq: ack.seq, detail: ack.duplicate ? 'duplicate' : '' }
    } catch (err) {
      if (err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamWrongLastSequence) {
        lost++
        continue
      }
      return { ...planned, outcome: 'failed', eventId: event.id, seq: null, detail: (err as Error).message }
    }
  }
  return { ...base, action: null, method: null, path: null, outcome: 'failed', eventId: null, seq: null, detail: `the source wrote this resource's partition during each of ${lost} attempts; run verify again` }
}

/** The repair event for a resource whose source state is `current` (null: the source lacks it); null when the config allows no such repair. */
export function repairEvent (source: string, type: TypeConfig, id: string, resource: string, current: unknown): RegionsyncEvent | null {
  const repair = type.repair
  if (repair === null) return null
  if (current === null) {
    if (repair.delete === null) return null
    return createEvent({ origin: source, method: 'DELETE', path: fillTemplate(repair.delete.path, id), resource, repair: true })
  }
  if (repair.put === null) return null
  const body = repair.put.wrap.split('.').reduceRight<unknown>((inner, key) => key === '' ? inner : { [key]: inner }, omit(current, repair.put.omit))
  return createEvent({
    origin: source,
    method: 'PUT',
    path: fillTemplate(repair.put.path, id),
    contentType: 'application/json',
    body: Buffer.from(JSON.stringify(body)),
    resource,
    repair: true
  })
}
