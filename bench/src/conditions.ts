import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { availableParallelism, cpus, release, totalmem, type } from 'node:os'
import { fileURLToPath } from 'node:url'
import { DEFAULT_PARTITIONS } from '@regionsync/shared'
import { NATS_SERVER_BIN } from '../../test/helpers/nats-server.js'

/** The repository root, from bench/dist/bench/src/. */
export const ROOT = fileURLToPath(new URL('../../../../', import.meta.url))

export interface Conditions {
  date: string
  machine: { cores: number, cpu: string, memoryGB: number, os: string }
  node: string
  natsServer: string
  packages: Record<string, string>
  partitions: number
  git: { commit: string, uncommittedFiles: number }
}

function run (cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim()
  } catch {
    return 'unknown'
  }
}

function version (pkg: string): string {
  try {
    return (JSON.parse(readFileSync(`${ROOT}node_modules/${pkg}/package.json`, 'utf8')) as { version: string }).version
  } catch {
    return 'unknown'
  }
}

export function conditions (): Conditions {
  const status = run('git', ['status', '--porcelain'])
  return {
    date: new Date().toISOString(),
    machine: { cores: availableParallelism(), cpu: cpus()[0]?.model ?? 'unknown', memoryGB: Math.round(totalmem() / 2 ** 30), os: `${type()} ${release()}` },
    node: process.version,
    natsServer: run(NATS_SERVER_BIN, ['--version']).replace(/^nats-server:\s*/, ''),
    packages: Object.fromEntries(['@nats-io/jetstream', '@nats-io/kv', '@nats-io/transport-node', 'undici', 'fastify', 'lmdb', 'autocannon'].map((p) => [p, version(p)])),
    partitions: DEFAULT_PARTITIONS,
    git: { commit: run('git', ['rev-parse', '--short', 'HEAD']), uncommittedFiles: status === '' || status === 'unknown' ? 0 : status.split('\n').length }
  }
}
