import { Counter, Gauge, Histogram, Registry } from 'prom-client'

export interface PublisherMetrics {
  registry: Registry
  published: Counter<'region'>
  publishFailures: Counter<'region'>
  spooled: Counter<'region'>
  spoolEvents: Gauge<'region'>
  refused: Counter<'region' | 'reason'>
  unreplicated: Counter<'region'>
  replaysReceived: Counter<'region' | 'outcome'>
  ackSeconds: Histogram<'region'>
}

export function createPublisherMetrics (registry: Registry = new Registry()): PublisherMetrics {
  const registers = [registry]
  return {
    registry,
    published: new Counter({ name: 'regionsync_events_published_total', help: 'Events published to JetStream and acknowledged', labelNames: ['region'], registers }),
    publishFailures: new Counter({ name: 'regionsync_publish_failures_total', help: 'Publishes JetStream did not acknowledge in time', labelNames: ['region'], registers }),
    spooled: new Counter({ name: 'regionsync_events_spooled_total', help: 'Events written to the outage spool', labelNames: ['region'], registers }),
    spoolEvents: new Gauge({ name: 'regionsync_spool_events', help: 'Events in the outage spool, waiting for JetStream', labelNames: ['region'], registers }),
    refused: new Counter({ name: 'regionsync_writes_refused_total', help: 'Writes refused with 503 before their handler ran', labelNames: ['region', 'reason'], registers }),
    unreplicated: new Counter({ name: 'regionsync_unreplicated_writes_total', help: 'Writes let through with the spool full, never replicated', labelNames: ['region'], registers }),
    replaysReceived: new Counter({ name: 'regionsync_replays_received_total', help: 'Genuine replays from replicators, by outcome: applied, released (answered non-2xx), duplicate, superseded, in-progress, different-body, unavailable', labelNames: ['region', 'outcome'], registers }),
    ackSeconds: new Histogram({
      name: 'regionsync_publish_ack_seconds',
      help: 'Time from publish to JetStream acknowledgement',
      labelNames: ['region'],
      buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers
    })
  }
}
