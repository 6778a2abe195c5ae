import { InvalidOptionError } from './errors.js'
import { consumerName, eventSubject, partitionFilter } from './partitioning.js'

/**
 * Every NATS name regionsync uses derives from one namespace, so that several independent
 * deployments (or tests) can share a server without seeing each other's events.
 */
export const DEFAULT_NAMESPACE = 'regionsync'

const REGION_RE = /^[a-z0-9][a-z0-9_-]{0,31}$/
const NAMESPACE_RE = /^[a-z][a-z0-9_]{0,31}$/

export function validateRegion (region: unknown, option = 'region'): string {
  if (typeof region !== 'string' || !REGION_RE.test(region)) {
    throw new InvalidOptionError(option, 'expects a region name of 1-32 lower-case letters, digits, "-" or "_" (e.g. "eu-west")')
  }
  return region
}

export function validateNamespace (ns: unknown, option = 'namespace'): string {
  if (typeof ns !== 'string' || !NAMESPACE_RE.test(ns)) {
    throw new InvalidOptionError(option, 'expects 1-32 lower-case letters, digits or "_", starting with a letter')
  }
  return ns
}

export interface Names {
  namespace: string
  /** The stream that holds every event. */
  eventStream: string
  /** The stream that holds dead letters of every region. */
  dlqStream: string
  /** Subject of an event: `<ns>.ev.<partition>.<origin>`. */
  eventSubject: (partition: number, origin: string) => string
  /** Filter for one partition, all origins. */
  partitionFilter: (partition: number) => string
  eventSubjects: string
  dlqSubject: (region: string) => string
  dlqSubjects: string
  /** Durable consumer of one region and partition, shared by all of the region's instances. */
  consumer: (region: string, partition: number) => string
  /** KV bucket of applied event ids (idempotency records). */
  appliedBucket: string
  /** KV bucket of the target's plugin: replays claimed and answered (to answer a duplicate the same way), and per resource the highest sequence applied. */
  replayBucket: string
  /** KV bucket of partition leases and live instances per region (who applies which partition). */
  ownersBucket: string
  /** KV bucket of what each region knows of each entity: the target's id, created, deleted (I8, DELETE 404). */
  entityBucket: string
  /** KV bucket of the collections whose ids each region's target replaces. */
  idTypesBucket: string
  /** NATS subject every replicator answers status requests on. */
  statusSubject: string
  /** Subject on which one instance of a region replays a dead letter for `regionsync dlq replay`. */
  dlqReplaySubject: (region: string) => string
}

export function names (namespace: string = DEFAULT_NAMESPACE): Names {
  const ns = validateNamespace(namespace)
  const upper = ns.toUpperCase()
  return {
    namespace: ns,
    eventStream: `${upper}_EVENTS`,
    dlqStream: `${upper}_DLQ`,
    eventSubject: (partition, origin) => eventSubject(ns, partition, origin),
    partitionFilter: (partition) => partitionFilter(ns, partition),
    eventSubjects: `${ns}.ev.>`,
    dlqSubject: (region) => `${ns}.dlq.${region}`,
    dlqSubjects: `${ns}.dlq.>`,
    consumer: (region, partition) => consumerName(ns, region, partition),
    appliedBucket: `${ns}_applied`,
    replayBucket: `${ns}_replays`,
    ownersBucket: `${ns}_owners`,
    entityBucket: `${ns}_entities`,
    idTypesBucket: `${ns}_id_types`,
    statusSubject: `${ns}.status`,
    dlqReplaySubject: (region) => `${ns}.dlq-replay.${region}`
  }
}
