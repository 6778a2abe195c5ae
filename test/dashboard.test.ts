import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { NatsConnection } from '@nats-io/transport-node'
import { Replicator, startMetricsServer, type RegionStatus, type ReplicatorOptions, type ReplicatorStatus } from '@regionsync/replicator'
import { chromium, type BrowserContext } from 'playwright-core'
import { request } from 'undici'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { EventPublisher, newEvent } from './helpers/events.js'
import { SIGNING_KEY, connect, silentLogger, uniqueNamespace, waitFor, startReplicator } from './helpers/fixtures.js'
import { NatsServer, freePort } from './helpers/nats-server.js'
import { TestTarget } from './helpers/target.js'

const CHROMIUM = '/usr/bin/chromium'
const CHROMIUM_MISSING = `${CHROMIUM} is missing, so the dashboard is not checked in a browser: apt-get install -y chromium (.ci/run installs it)`
const OUTPUT_DIR = fileURLToPath(new URL('./output/', import.meta.url))
/** How far the page's lag may trail /regions: the page polls every 2 s and lag grows while events wait. */
const LAG_TOLERANCE_S = 5

let nats: NatsServer
beforeAll(async () => { if (existsSync(CHROMIUM)) nats = await NatsServer.start() })
afterAll(async () => { await nats?.stop() })

const cleanup: Array<() => Promise<unknown>> = []
afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn()
})

async function connection (): Promise<NatsConnection> {
  const nc = await connect(nats.url)
  cleanup.push(async () => await nc.close())
  return nc
}

async function replicator (namespace: string, region: string, target: string, extra: Partial<ReplicatorOptions> = {}): Promise<Replicator> {
  const r = await startReplicator(await connection(), { region, namespace, target, ...extra })
  cleanup.push(async () => await r.close())
  return r
}

async function getJson<T> (url: string): Promise<{ status: number, headers: Record<string, unknown>, body: T }> {
  const res = await request(url)
  return { status: res.statusCode, headers: res.headers, body: await res.body.json() as T }
}

/** One table row as the page shows it: `data-value` of each numeric cell, and the text a reader sees. */
interface ShownRow {
  region: string
  values: Record<string, string>
  texts: Record<string, string>
}

describe('dashboard page', () => {
  it('renders every region in headless Chromium, with the numbers /regions and /status give, and a chart per region', async (ctx) => {
    if (!existsSync(CHROMIUM)) ctx.skip(CHROMIUM_MISSING)
    const ns = uniqueNamespace()

    // "sa": consumers exist (a replicator ran once) but no instance is live, so its events wait.
    const sa = await replicator(ns, 'sa', `http://127.0.0.1:${await freePort()}`)
    const partitions = sa.partitions
    await sa.close()

    const euTarget = await TestTarget.start()
    cleanup.push(async () => await euTarget.close())
    const apTarget = await TestTarget.start({ script: (req) => req.path === '/v3/rejected' ? { status: 422, body: '{"error":"unprocessable"}' } : { status: 200 } })
    cleanup.push(async () => await apTarget.close())
    const eu = await replicator(ns, 'eu', euTarget.url, { instance: 'eu-1' })
    await replicator(ns, 'eu', euTarget.url, { instance: 'eu-2' })
    await replicator(ns, 'ap', apTarget.url, { instance: 'ap-1' })

    const pub = new EventPublisher(await connection(), ns, partitions, SIGNING_KEY)
    for (let i = 0; i < 4; i++) await pub.publish(newEvent({ resource: `users/${i}` }))
    await pub.publish(newEvent({ resource: 'users/9', path: '/v3/rejected' }))

    // Settle first, so the page and the test read the same steady state (only sa's lag moves).
    await waitFor('eu and ap caught up, ap with one dead letter, sa with 5 pending', async () => {
      const byRegion = new Map((await eu.clusterStatus()).map((r) => [r.region, r]))
      return byRegion.get('eu')?.pending === 0 && byRegion.get('eu')?.instances.length === 2 &&
        byRegion.get('ap')?.pending === 0 && byRegion.get('ap')?.deadLetters === 1 &&
        byRegion.get('sa')?.pending === 5
    })

    const server = await startMetricsServer(eu, 0, '127.0.0.1', silentLogger)
    cleanup.push(async () => await server.close())
    const base = `http://127.0.0.1:${server.port}`

    const userDataDir = await mkdtemp(join(tmpdir(), 'regionsync-chromium-'))
    cleanup.push(async () => await rm(userDataDir, { recursive: true, force: true }))
    const browser: BrowserContext = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1280, height: 860 },
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync']
    })
    cleanup.push(async () => await browser.close())
    const page = browser.pages()[0] ?? await browser.newPage()
    const problems: string[] = []
    page.on('console', (msg) => { if (msg.type() === 'error' || msg.type() === 'warning') problems.push(`${msg.type()}: ${msg.text()}`) })
    page.on('pageerror', (err) => problems.push(`pageerror: ${err.message}`))

    const response = await page.goto(`${base}/`)
    expect(response?.status()).toBe(200)
    expect(response?.headers()['content-type']).toBe('text/html; charset=utf-8')
    const csp = response?.headers()['content-security-policy'] ?? ''
    expect(csp).toContain("default-src 'none'")
    expect(csp).toMatch(/script-src 'sha256-[A-Za-z0-9+/=]+'/)
    expect(csp).not.toContain('unsafe-inline')

    // Every region has a row, and each chart a line through at least two samples.
    await page.waitForFunction((regions) => regions.every((r) =>
      document.querySelector(`tr[data-region="${r}"]`) !== null &&
      ['lag', 'pending'].every((c) => /L/.test(document.querySelector(`svg[data-chart="${c}"][data-region="${r}"] path.line`)?.getAttribute('d') ?? ''))
    ), ['ap', 'eu', 'sa'], { timeout: 15_000 })

    await mkdir(OUTPUT_DIR, { recursive: true })
    await page.screenshot({ path: join(OUTPUT_DIR, 'dashboard.png'), fullPage: true })

    const shown: ShownRow[] = await page.$$eval('#regions tr[data-region]', (trs) => trs.map((tr) => {
      const values: Record<string, string> = {}
      const texts: Record<string, string> = {}
      for (const td of tr.querySelectorAll<HTMLElement>('td[data-field]')) {
        values[td.dataset.field as string] = td.dataset.value ?? ''
        texts[td.dataset.field as string] = td.textContent ?? ''
      }
      return { region: (tr as HTMLElement).dataset.region as string, values, texts }
    }))
    const regions = await getJson<RegionStatus[]>(`${base}/regions`)
    expect(regions.status).toBe(200)
    expect(shown.map((r) => r.region)).toEqual(regions.body.map((r) => r.region))
    expect(shown.map((r) => r.region)).toEqual(['ap', 'eu', 'sa'])

    for (const want of regions.body) {
      const row = shown.find((r) => r.region === want.region)!
      expect(Number(row.values.instances), `${want.region} instances`).toBe(want.instances.length)
      expect(Number(row.values.pending), `${want.region} pending`).toBe(want.pending)
      expect(Number(row.values.deadLetters), `${want.region} dead letters`).toBe(want.deadLetters)
      expect(Math.abs(Number(row.values.lag) - want.lagSeconds), `${want.region} lag`).toBeLessThanOrEqual(LAG_TOLERANCE_S)
      // What a reader sees is those same numbers.
      expect(row.texts.instances).toBe(String(want.instances.length))
      expect(row.texts.pending).toBe(want.pending.toLocaleString('en-US'))
      expect(row.texts.deadLetters).toBe(String(want.deadLetters))
      expect(row.texts.lag).toMatch(/^\d+(\.\d)? s$/)
      expect(row.texts.breaker).toBe(want.breaker ?? 'no replicator')
    }
    const byRegion = new Map(shown.map((r) => [r.region, r]))
    expect(byRegion.get('sa')!.values).toMatchObject({ instances: '0', pending: '5', breaker: 'none' })
    expect(Number(byRegion.get('sa')!.values.lag)).toBeGreaterThan(0)
    expect(byRegion.get('ap')!.values).toMatchObject({ deadLetters: '1', breaker: 'closed' })
    expect(byRegion.get('ap')!.texts.lastError).toContain('422')
    expect(byRegion.get('ap')!.texts.lastError).toContain('ap-1')

    // The serving instance's own region agrees with its /status.
    const status = await getJson<ReplicatorStatus>(`${base}/status`)
    expect(Number(byRegion.get('eu')!.values.pending)).toBe(status.body.pending)
    expect(Math.abs(Number(byRegion.get('eu')!.values.lag) - status.body.lagSeconds)).toBeLessThanOrEqual(LAG_TOLERANCE_S)

    expect(await page.locator('svg[data-chart] path.line').count()).toBe(6)
    expect(problems).toEqual([])
  })
})
