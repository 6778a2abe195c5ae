/**
 * Partitioning, in one place: which partition a resource key falls in, the subjects and durable
 * consumer names built from a partition, and reading a partition back out of them. Events of one
 * resource share a partition, and one instance of a region applies a partition at a time, in
 * order (I3).
 */
export const DEFAULT_PARTITIONS = 16
export const MAX_PARTITIONS = 256

/**
 * FNV-1a over the resource key's UTF-16 code units. Stable across processes and versions: the
 * partition of a key must never change while events for it may still be in flight, or order breaks.
 */
export function partitionOf (resourceKey: string, partitions: number): number {
  let h = 0x811c9dc5
  for (let i = 0; i < resourceKey.length; i++) {
    h ^= resourceKey.charCodeAt(i)
    h = Math.imul(h, 0x01000193)
  }
  return (h >>> 0) % partitions
}

/** Subject of an event: `<ns>.ev.<partition>.<origin>`. */
export function eventSubject (ns: string, partition: number, origin: string): string {
  return `${ns}.ev.${partition}.${origin}`
}

/** Filter for one partition's events, every origin. */
export function partitionFilter (ns: string, partition: number): string {
  return `${ns}.ev.${partition}.*`
}

/** Durable consumer of one region and partition, shared by all of the region's instances: `<ns>_<region>_p<partition>`. */
export function consumerName (ns: string, region: string, partition: number): string {
  return `${ns}_${region}_p${partition}`
}

/** The partition an event subject names; null when the subject is not an event subject. */
export function partitionOfSubject (subject: string): number | null {
  const m = /\.ev\.(\d+)\.[^.]+$/.exec(subject)
  return m === null ? null : Number(m[1])
}

/** Region and partition a durable consumer's name names; null when it is not one of ours. */
export function parseConsumerName (ns: string, name: string): { region: string, partition: number } | null {
  const m = new RegExp(`^${ns}_([a-z0-9][a-z0-9_-]{0,31})_p(\\d+)$`).exec(name)
  return m === null ? null : { region: m[1] as string, partition: Number(m[2]) }
}
