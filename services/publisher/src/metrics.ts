import { Counter, Histogram, Registry } from 'prom-client'

export interface PublisherMetrics {
  registry: Registry
  published: Counter<'region'>
  publishFailures: Counter<'region'>
  replaysSkipped: Counter<'region'>
  ackSeconds: Histogram<'region'>
}

export function createPublisherMetrics (registry: Registry = new Registry()): PublisherMetrics {
  return {
    registry,
    published: new Counter({ name: 'regionsync_events_published_total', help: 'Mutations published to JetStream and acknowledged', labelNames: ['region'], registers: [registry] }),
    publishFailures: new Counter({ name: 'regionsync_publish_failures_total', help: 'Mutations whose event JetStream did not acknowledge', labelNames: ['region'], registers: [registry] }),
    replaysSkipped: new Counter({ name: 'regionsync_replays_received_total', help: 'Genuine replays from replicators, applied and not re-published', labelNames: ['region'], registers: [registry] }),
    ackSeconds: new Histogram({
      name: 'regionsync_publish_ack_seconds',
      help: 'Time from publish to JetStream acknowledgement',
      labelNames: ['region'],
      buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: [registry]
    })
  }
}
