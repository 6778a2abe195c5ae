import { fileURLToPath } from 'node:url'
import { request } from 'undici'
import { expect, it } from 'vitest'
import { NodeProcess } from './helpers/child-process.js'
import { waitFor } from './helpers/fixtures.js'
import { useNats } from './helpers/harness.js'

const DEMO = fileURLToPath(new URL('../examples/dist/demo-main.js', import.meta.url))

const h = useNats()

it('npm run demo prints each region\'s dashboard URL, which answers with the lag page and /metrics, and the exact status command', async () => {
  const demo = new NodeProcess(DEMO, ['--users', '20'], { env: { NATS_URL: h.nats.url } }).spawn()
  h.defer(async () => await demo.kill('SIGTERM'))

  const url = await waitFor(`the eu dashboard URL (stdout: ${demo.stdout}, stderr: ${demo.stderr})`, () => /eu lag dashboard (http:\/\/\S+)/.exec(demo.stdout)?.[1], 30_000)
  const page = await request(url)
  expect(page.statusCode).toBe(200)
  expect(page.headers['content-type']).toContain('text/html')
  expect(await page.body.text()).toContain('regionsync')
  const metrics = await request(new URL('/metrics', url))
  expect(metrics.statusCode).toBe(200)
  expect(await metrics.body.text()).toContain('regionsync_pending_events')
  expect(demo.stdout).toMatch(/ap lag dashboard http:\/\/127\.0\.0\.1:\d+\//)
  const namespace = /namespace (demo_[0-9a-f]+)/.exec(demo.stdout)?.[1]
  expect(demo.stdout).toContain(`npx regionsync status --nats ${h.nats.url} --namespace ${namespace as string}`)

  await waitFor('the demo to finish its writes and wait for Ctrl-C', () => demo.stdout.includes('still running'), 60_000)
  expect(demo.stdout).toContain('every region matches the source')
  expect((await demo.kill('SIGTERM')).code).toBe(0)
}, 90_000)
