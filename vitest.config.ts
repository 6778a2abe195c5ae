import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 30_000,
    pool: 'forks',
    // Two cores: more parallel files only make the servers they start compete.
    poolOptions: { forks: { maxForks: 2, minForks: 1 } },
    reporters: ['default']
  }
})
