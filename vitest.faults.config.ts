import { defineConfig } from 'vitest/config'

/*
 * `npm run test:faults`: attacks a running system (kill -9, NATS outages, broken targets, bad
 * input) and checks every region against what the client saw acknowledged. One file at a time:
 * each starts its own nats-server(s), APIs and replicator processes, and two cores is all there is.
 */
export default defineConfig({
  test: {
    include: ['test/faults/**/*.test.ts'],
    testTimeout: 300_000,
    hookTimeout: 120_000,
    teardownTimeout: 60_000,
    pool: 'forks',
    fileParallelism: false,
    globalSetup: ['test/faults/global-setup.ts'],
    reporters: ['default']
  }
})
