import { jetstreamManager } from '@nats-io/jetstream'
import { parseVerifyConfig, runVerify } from '@regionsync/replicator'
import { connectNats, createLogger, eventStreamPartitions, names } from '@regionsync/shared'
import { childConfig, fail, serveParent, toParent } from './children.js'

/** `regionsync verify` as a process of its own, so its peak RSS is its own. */
export interface VerifyChildConfig {
  config: unknown
  nats: string
  namespace: string
}

const HEAP_SAMPLE_MS = 50
/**
 * How often the child collects fully and reads what is still live. The peak heap in use follows
 * when V8 chooses to collect; the live heap after a full collection is what verify holds, and is
 * what flatness is judged on (as the memory section does for the replicator).
 */
const LIVE_SAMPLE_MS = 1000

async function main (): Promise<void> {
  const c = childConfig<VerifyChildConfig>()
  const config = parseVerifyConfig(c.config)
  const nc = await connectNats({ servers: c.nats })
  const jsm = await jetstreamManager(nc)
  const n = names(c.namespace)
  const partitions = await eventStreamPartitions(jsm, n)
  if (partitions === null) throw new Error(`no event stream in ${c.namespace}`)
  serveParent({
    run: async () => {
      let peakHeap = process.memoryUsage().heapUsed
      let peakLiveHeap = 0
      const gc = (globalThis as { gc?: () => void }).gc
      if (gc === undefined) throw new Error('the verify child needs --expose-gc')
      const sampler = setInterval(() => { peakHeap = Math.max(peakHeap, process.memoryUsage().heapUsed) }, HEAP_SAMPLE_MS)
      const sampleLive = (): void => { gc(); peakLiveHeap = Math.max(peakLiveHeap, process.memoryUsage().heapUsed) }
      const live = setInterval(sampleLive, LIVE_SAMPLE_MS)
      const started = performance.now()
      const cpu = process.cpuUsage()
      try {
        const report = await runVerify({ config, nats: { jsm, names: n, partitions }, repair: false, dryRun: false, maxRepairs: 0, logger: createLogger({ level: 'silent' }) })
        const used = process.cpuUsage(cpu)
        const seconds = (performance.now() - started) / 1000
        // Once more with the report in hand: a run shorter than a sampling period has a figure too.
        sampleLive()
        toParent({
          type: 'done',
          seconds,
          cpuSeconds: (used.user + used.system) / 1e6,
          peakHeap,
          peakLiveHeap,
          types: report.types,
          differences: report.differences.length,
          requests: report.requests
        })
      } finally {
        clearInterval(sampler)
        clearInterval(live)
      }
    }
  }, async () => await nc.close())
  toParent({ type: 'ready', rss: process.memoryUsage().rss })
}

main().catch(fail)
