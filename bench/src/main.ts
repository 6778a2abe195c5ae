import { randomBytes } from 'node:crypto'
import { mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { killAllChildren } from './children.js'
import { conditions, ROOT } from './conditions.js'
import { removeAllQuotas } from './cpu-quota.js'
import type { BenchContext } from './context.js'
import { runIngress } from './ingress.js'
import { LAG_REGIONS, runLag, type OfferedRate } from './lag.js'
import { runMemory } from './memory.js'
import { formatProfile, summariseProfile, type ProfileSummary } from './profile-summary.js'
import { runReplication } from './replication.js'
import { evaluateTargets, formatResults, type BenchResults, type Sections } from './report.js'
import { runScaling } from './scaling.js'
import { Progress, round } from './util.js'
import { runVerifyBench } from './verify.js'
import { runWan } from './wan.js'

const SECTIONS = ['ingress', 'replication', 'lag', 'memory', 'scaling', 'wan', 'verify'] as const
type SectionName = (typeof SECTIONS)[number]
/** Shares of the measured capacity the lag run offers, in turn; the target is judged at the last. */
const LAG_LOAD_SHARES = [0.25, 0.5]

const USAGE = `usage: npm run bench -- [--quick] [--only ${SECTIONS.join(',')}] [--lag-rate N] [--profile] [--out FILE]

  --quick      smoke sizes, a few minutes; targets are reported, not asserted
  --only       run these sections only (comma-separated)
  --lag-rate   offered writes/s for the lag run (default: ${LAG_LOAD_SHARES.map((x) => `${x * 100}%`).join(' then ')} of the capacity measured in this run)
  --profile    run every measured process (source API, replicator, baseline, raw client) under node --cpu-prof;
               the profiles land in bench/results/profiles/, a summary of each in the table
  --out        results file (default bench/results/latest.json; the table goes next to it as .txt)`

async function main (): Promise<number> {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      only: { type: 'string' },
      'lag-rate': { type: 'string' },
      profile: { type: 'boolean', default: false },
      out: { type: 'string', default: join(ROOT, 'bench/results/latest.json') },
      help: { type: 'boolean', short: 'h' }
    }
  })
  if (values.help === true) { process.stdout.write(`${USAGE}\n`); return 0 }
  const only = values.only === undefined ? [...SECTIONS] : values.only.split(',').map((s) => s.trim())
  const unknown = only.filter((s) => !(SECTIONS as readonly string[]).includes(s))
  if (unknown.length > 0) { process.stderr.write(`bench: --only: unknown section(s) ${unknown.join(', ')}; expects ${SECTIONS.join(', ')}\n`); return 2 }
  const lagRate = values['lag-rate'] === undefined ? null : Number(values['lag-rate'])
  if (lagRate !== null && (!Number.isInteger(lagRate) || lagRate < 1 || lagRate > 100_000)) {
    process.stderr.write('bench: --lag-rate: expects whole writes a second, 1 to 100000\n')
    return 2
  }

  const profileDir = values.profile === true ? join(ROOT, 'bench/results/profiles') : null
  if (profileDir !== null) {
    rmSync(profileDir, { recursive: true, force: true })
    mkdirSync(profileDir, { recursive: true })
  }
  const ctx: BenchContext = { quick: values.quick === true, profileDir, progress: new Progress(), signingKey: randomBytes(32).toString('hex'), natsServers: new Set() }
  const interrupt = (signal: string): void => {
    ctx.progress.done()
    process.stderr.write(`bench: ${signal}; stopping every process it started\n`)
    killAllChildren()
    // A killed child leaves its cgroup a moment later; the servers' stop gives it that moment.
    Promise.all([...ctx.natsServers].map(async (s) => await s.stop())).finally(() => { removeAllQuotas(); process.exit(130) })
  }
  process.once('SIGINT', () => interrupt('SIGINT'))
  process.once('SIGTERM', () => interrupt('SIGTERM'))

  const cond = conditions()
  const started = performance.now()
  const sections: Sections = {}
  const errors: Record<string, string> = {}
  const wanted = (s: SectionName): boolean => only.includes(s)
  const attempt = async <T>(name: SectionName, fn: () => Promise<T>): Promise<T | undefined> => {
    if (!wanted(name)) return undefined
    try {
      return await fn()
    } catch (err) {
      errors[name] = err instanceof Error ? err.message : String(err)
      ctx.progress.done()
      process.stderr.write(`bench: ${name} failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`)
      killAllChildren()
      return undefined
    }
  }

  sections.ingress = await attempt('ingress', async () => await runIngress(ctx))
  sections.replication = await attempt('replication', async () => await runReplication(ctx))
  sections.lag = await attempt('lag', async () => {
    const { rates, basis } = lagLoad(ctx, sections, lagRate)
    return await runLag(ctx, rates, basis)
  })
  sections.memory = await attempt('memory', async () => await runMemory(ctx))
  sections.scaling = await attempt('scaling', async () => await runScaling(ctx))
  sections.wan = await attempt('wan', async () => await runWan(ctx))
  sections.verify = await attempt('verify', async () => await runVerifyBench(ctx))
  ctx.progress.done()

  const profiles: ProfileSummary[] = profileDir === null
    ? []
    : readdirSync(profileDir).filter((f) => f.endsWith('.cpuprofile')).sort().map((f) => summariseProfile(join(profileDir, f)))
  const results: BenchResults = {
    version: 1,
    quick: ctx.quick,
    asserted: !ctx.quick,
    conditions: cond,
    durationSeconds: round((performance.now() - started) / 1000, 1),
    sections,
    errors,
    targets: evaluateTargets(sections),
    profiles
  }
  const lines = formatResults(results)
  for (const p of profiles) lines.push('', ...formatProfile(p))
  mkdirSync(join(values.out, '..'), { recursive: true })
  writeFileSync(values.out, `${JSON.stringify(results, null, 2)}\n`)
  writeFileSync(values.out.replace(/\.json$/, '') + '.txt', `${lines.join('\n')}\n`)
  process.stdout.write(`${lines.join('\n')}\n\nresults: ${values.out}\n`)
  return Object.keys(errors).length > 0 ? 1 : 0
}

/**
 * The lag run's offered rates: the one asked for, or shares of the capacity this run measured:
 * the lower of the source's ingress with the plugin and one region's replication throughput
 * divided by the regions the lag run feeds, since their replicators share this machine's cores.
 */
function lagLoad (ctx: BenchContext, s: Sections, asked: number | null): { rates: OfferedRate[], basis: string } {
  if (asked !== null) return { rates: [{ rate: asked, share: null }], basis: 'set with --lag-rate' }
  const ingress = s.ingress?.variants.find((v) => v.name === 'with-plugin')?.requestsPerSec
  const replication = s.replication?.runs.find((r) => r.mode === 'replicator')?.eventsPerSec
  const perRegion = replication === undefined ? undefined : replication / LAG_REGIONS.length
  const known = [ingress, perRegion].filter((v): v is number => v !== undefined && Number.isFinite(v))
  if (known.length === 0) {
    const rate = ctx.quick ? 200 : 300
    return { rates: [{ rate, share: null }], basis: 'default; no capacity measured in this run' }
  }
  const capacity = Math.min(...known)
  return {
    rates: LAG_LOAD_SHARES.map((share) => ({ rate: Math.max(1, Math.round(capacity * share)), share })),
    basis: `shares of ${Math.round(capacity)}/s = min(ingress with the plugin ${ingress === undefined ? '-' : Math.round(ingress)}/s, replication ${replication === undefined ? '-' : Math.round(replication)}/s / ${LAG_REGIONS.length} regions on one machine)`
  }
}

main().then((code) => process.exit(code), (err: unknown) => {
  process.stderr.write(`bench: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`)
  killAllChildren()
  process.exit(1)
})
