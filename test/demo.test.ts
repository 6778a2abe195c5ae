import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { request } from 'undici'
import { expect, it } from 'vitest'
import { waitFor } from './helpers/fixtures.js'
import { useNats } from './helpers/harness.js'

const DEMO = fileURLToPath(new URL('../examples/dist/demo-main.js', import.meta.url))

const h = useNats()

it('npm run demo prints each region\'s dashboard URL, which answers with the lag page and /metrics, and the exact status command', async () => {
  const proc = spawn(process.execPath, [DEMO, '--users', '20'], { env: { PATH: process.env.PATH, HOME: process.env.HOME, NATS_URL: h.nats.url }, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  proc.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d })
  proc.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d })
  const exited = new Promise<number | null>((resolve) => proc.once('close', (code) => resolve(code)))
  h.defer(async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGTERM')
      await exited
    }
  })

  const url = await waitFor(`the eu dashboard URL (stdout: ${stdout}, stderr: ${stderr})`, () => /eu lag dashboard (http:\/\/\S+)/.exec(stdout)?.[1], 30_000)
  const page = await request(url)
  expect(page.statusCode).toBe(200)
  expect(page.headers['content-type']).toContain('text/html')
  expect(await page.body.text()).toContain('regionsync')
  const metrics = await request(new URL('/metrics', url))
  expect(metrics.statusCode).toBe(200)
  expect(await metrics.body.text()).toContain('regionsync_pending_events')
  expect(stdout).toMatch(/ap lag dashboard http:\/\/127\.0\.0\.1:\d+\//)
  const namespace = /namespace (demo_[0-9a-f]+)/.exec(stdout)?.[1]
  expect(stdout).toContain(`npx regionsync status --nats ${h.nats.url} --namespace ${namespace as string}`)

  await waitFor('the demo to finish its writes and wait for Ctrl-C', () => stdout.includes('still running'), 60_000)
  expect(stdout).toContain('every region matches the source')
  proc.kill('SIGTERM')
  expect(await exited).toBe(0)
}, 90_000)
