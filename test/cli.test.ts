import { randomBytes } from 'node:crypto'
import { jetstreamManager } from '@nats-io/jetstream'
import { names, regionLag } from '@regionsync/shared'
import { Replicator, listDeadLetters, type ReplicatorOptions } from '@regionsync/replicator'
import { request } from 'undici'
import { describe, expect, it } from 'vitest'
import { RegionsyncProcess, runRegionsync, type Finished } from './helpers/child-process.js'
import { EventPublisher, newEvent } from './helpers/events.js'
import { SIGNING_KEY, silentLogger, uniqueNamespace, waitFor } from './helpers/fixtures.js'
import { freePort } from './helpers/nats-server.js'
import { TestTarget, type Script } from './helpers/target.js'
import { useNats } from './helpers/harness.js'

const h = useNats()

/** Runs the command to its end; a hang is a failure, not a timeout of the whole file. */
async function run (args: string[], env?: NodeJS.ProcessEnv): Promise<Finished> {
  return await runRegionsync(args, { env, timeoutMs: 10_000 })
}

/** Starts the command, killed -9 after the test if it is still running. */
function start (args: string[], env?: NodeJS.ProcessEnv): RegionsyncProcess {
  const cmd = new RegionsyncProcess(args, { env }).spawn()
  h.defer(async () => await cmd.kill())
  return cmd
}

const connection = h.connection

async function target (script?: Script): Promise<TestTarget> {
  const t = await TestTarget.start(script !== undefined ? { script } : {})
  h.defer(async () => await t.close())
  return t
}

async function replicator (region: string, namespace: string, targetUrl: string, extra: Partial<ReplicatorOptions> = {}): Promise<Replicator> {
  const r = await Replicator.start({
    region, target: targetUrl, signingKey: SIGNING_KEY, connection: await connection(), logger: silentLogger, namespace,
    retry: { baseDelayMs: 50, maxDelayMs: 500 }, ...extra
  })
  h.defer(async () => await r.close())
  return r
}

/** Publishes one event and checks that it reached the target, sent with `token`. */
async function expectAppliedWithToken (t: TestTarget, ns: string, partitions: number, token: string): Promise<void> {
  const event = newEvent()
  await new EventPublisher(await connection(), ns, partitions, SIGNING_KEY).publish(event)
  await waitFor('the event at the target', () => t.withKey(event.id).length === 1)
  expect(t.requests[0]!.headers.authorization).toBe(`Bearer ${token}`)
}

async function get (port: number, path: string): Promise<{ status: number, body: any }> {
  const res = await request(`http://127.0.0.1:${port}${path}`)
  const text = await res.body.text()
  return { status: res.statusCode, body: text.startsWith('{') ? JSON.parse(text) : text }
}

describe('bad configuration', () => {
  const T = 'http://127.0.0.1:9'
  const good = (): Record<string, string> => ({ '--region': 'eu', '--target': T, '--signing-key': SIGNING_KEY, '--nats': h.nats.url, '--metrics-port': '0' })
  const argv = (flags: Record<string, string | undefined>, ...more: string[]): string[] =>
    ['replicate', ...Object.entries(flags).flatMap(([k, v]) => v === undefined ? [] : [k, v]), ...more]

  const cases: Array<[string, () => string[], string, Record<string, string>?]> = [
    ['missing --region', () => argv({ ...good(), '--region': undefined }), '--region'],
    ['bad --region', () => argv({ ...good(), '--region': 'EU West' }), '--region'],
    ['missing --target', () => argv({ ...good(), '--target': undefined }), '--target'],
    ['malformed --target', () => argv({ ...good(), '--target': 'not a url' }), '--target'],
    ['--target that is not http(s)', () => argv({ ...good(), '--target': 'ftp://eu.api.internal' }), '--target'],
    ['--target with credentials', () => argv({ ...good(), '--target': 'https://admin:hunter2@eu.api.internal' }), '--target'],
    ['missing --signing-key', () => argv({ ...good(), '--signing-key': undefined }), '--signing-key'],
    ['short --signing-key', () => argv({ ...good(), '--signing-key': 'short-secret' }), '--signing-key'],
    ['a short key in a --signing-key list', () => argv({ ...good(), '--signing-key': `${SIGNING_KEY},short-secret` }), '--signing-key'],
    ['bad --from', () => argv({ ...good(), '--from': 'yesterday' }), '--from'],
    ['bad --namespace', () => argv({ ...good(), '--namespace': 'Bad.Namespace' }), '--namespace'],
    ['unreachable --nats', () => argv({ ...good(), '--nats': 'nats://127.0.0.1:1' }), '--nats'],
    ['--metrics-port out of range', () => argv({ ...good(), '--metrics-port': '70000' }), '--metrics-port'],
    ['--metrics-port not a number', () => argv({ ...good(), '--metrics-port': 'http' }), '--metrics-port'],
    ['unknown flag', () => argv(good(), '--bogus', 'x'), '--bogus'],
    ['malformed REGIONSYNC_TARGET_URL', () => argv({ ...good(), '--target': undefined }), '--target', { REGIONSYNC_TARGET_URL: 'not a url' }]
  ]

  it.each(cases)('%s exits non-zero with one line on stderr naming the option', async (_name, args, option, env) => {
    const res = await run(args(), env)
    expect(res.code).not.toBe(0)
    const lines = res.stderr.split('\n').filter((l) => l !== '')
    expect(lines).toHaveLength(1)
    expect(lines[0]).toContain(option)
    expect(res.stdout).not.toContain('replicator started')
    // A secret given on the command line never comes back in the error.
    expect(res.stderr).not.toContain('hunter2')
    expect(res.stderr).not.toContain('short-secret')
  })
})

describe('regionsync replicate', () => {
  it('a metrics port already in use exits non-zero with one line naming --metrics-port', async () => {
    const busy = await target()
    const res = await run(['replicate', '--region', 'eu', '--target', busy.url, '--signing-key', SIGNING_KEY, '--nats', h.nats.url,
      '--namespace', uniqueNamespace(), '--metrics-host', '127.0.0.1', '--metrics-port', String(busy.port)])
    expect(res.code).not.toBe(0)
    const lines = res.stderr.split('\n').filter((l) => l !== '')
    expect(lines).toHaveLength(1)
    expect(lines[0]).toContain('--metrics-port')
  })

  it('a signing key that does not verify the stream\'s newest event refuses to start, one line naming --signing-key', async () => {
    const ns = uniqueNamespace()
    const t = await target()
    const r = await replicator('eu', ns, t.url)
    await new EventPublisher(await connection(), ns, r.partitions, SIGNING_KEY).publish(newEvent())
    const res = await run(['replicate', '--region', 'ap', '--target', t.url, '--signing-key', randomBytes(32).toString('hex'), '--nats', h.nats.url,
      '--namespace', ns, '--metrics-port', '0'])
    expect(res.code).toBe(2)
    const lines = res.stderr.split('\n').filter((l) => l !== '')
    expect(lines).toHaveLength(1)
    expect(lines[0]).toContain('--signing-key')
    expect(res.stdout).not.toContain('replicator started')

    // One forged event on top of genuine ones does not stop a replicator with the right key.
    await new EventPublisher(await connection(), ns, r.partitions, randomBytes(32).toString('hex')).publish(newEvent())
    const right = start(['replicate', '--region', 'ap', '--target', t.url, '--signing-key', SIGNING_KEY, '--nats', h.nats.url, '--namespace', ns, '--metrics-port', '0'])
    await right.metricsPort()
  })

  it('a set-up that fails on the way is tried twice more: it starts once the cause is gone, or exits 3 with one line saying why', async () => {
    // A stream of another owner on the dead letters' subjects: the replicator cannot make its own.
    const jsm = await jetstreamManager(await connection())
    const blocked = async (ns: string): Promise<string> => {
      const name = `BLOCKER_${randomBytes(4).toString('hex')}`
      await jsm.streams.add({ name, subjects: [names(ns).dlqSubjects] })
      h.defer(async () => { await jsm.streams.delete(name).catch(() => false) })
      return name
    }
    const t = await target()
    const args = (ns: string): string[] => ['replicate', '--region', 'eu', '--target', t.url, '--signing-key', SIGNING_KEY, '--target-token', 'eu-token', '--nats', h.nats.url, '--namespace', ns, '--metrics-port', '0']

    const ns = uniqueNamespace()
    const blocker = await blocked(ns)
    const cmd = start(args(ns))
    const retrying = await cmd.waitForLog('could not start; retrying')
    expect(JSON.stringify(retrying.err)).toContain('overlap')
    await jsm.streams.delete(blocker)
    const port = await cmd.metricsPort()
    await waitFor('/readyz 200', async () => (await get(port, '/readyz')).status === 200)
    await expectAppliedWithToken(t, ns, (await get(port, '/status')).body.partitions, 'eu-token')

    const stays = uniqueNamespace()
    await blocked(stays)
    const startedAt = Date.now()
    const res = await run(args(stays))
    expect(res.code).toBe(3)
    // Three tries, 1 s then 2 s apart.
    expect(Date.now() - startedAt).toBeGreaterThanOrEqual(3000)
    expect(res.stdout.split('\n').filter((l) => l.includes('could not start; retrying'))).toHaveLength(2)
    const lines = res.stderr.split('\n').filter((l) => l !== '')
    expect(lines).toHaveLength(1)
    expect(lines[0]).toMatch(/^regionsync: JetStream refused a request: subjects overlap with an existing stream \(error \d+\)$/)
  })

  it('with good flags it serves /healthz and /readyz on the port it logs, applies events and exits 0 on SIGTERM', async () => {
    const ns = uniqueNamespace()
    const t = await target()
    const cmd = start(['replicate', '--region', 'eu', '--target', t.url, '--signing-key', SIGNING_KEY, '--target-token', 'eu-token',
      '--nats', h.nats.url, '--namespace', ns, '--metrics-port', '0'])
    const port = await cmd.metricsPort()

    expect(await get(port, '/healthz')).toMatchObject({ status: 200 })
    await waitFor('/readyz 200', async () => (await get(port, '/readyz')).status === 200)
    const status = (await get(port, '/status')).body as { region: string, partitions: number }
    expect(status.region).toBe('eu')

    await expectAppliedWithToken(t, ns, status.partitions, 'eu-token')

    const stoppedAt = Date.now()
    const exit = await cmd.kill('SIGTERM')
    expect(exit.code).toBe(0)
    expect(Date.now() - stoppedAt).toBeLessThan(5000)
    expect(cmd.stderr).toBe('')
    // The token is a credential: it never shows in the logs.
    expect(cmd.stdout).not.toContain('eu-token')
  })

  it('reads every setting from its environment variable', async () => {
    const ns = uniqueNamespace()
    const t = await target()
    const cmd = start(['replicate'], {
      REGIONSYNC_REGION: 'ap',
      REGIONSYNC_TARGET_URL: t.url,
      REGIONSYNC_SIGNING_KEY: SIGNING_KEY,
      REGIONSYNC_TARGET_TOKEN: 'ap-token',
      REGIONSYNC_METRICS_PORT: '0',
      REGIONSYNC_NAMESPACE: ns,
      NATS_URL: h.nats.url
    })
    const port = await cmd.metricsPort()
    const status = (await get(port, '/status')).body as { region: string, target: string, partitions: number }
    expect(status).toMatchObject({ region: 'ap', target: t.url })

    await expectAppliedWithToken(t, ns, status.partitions, 'ap-token')
  })

  it('takes a comma-separated key list while keys rotate: verifies events signed with any, signs webhooks with each', async () => {
    const ns = uniqueNamespace()
    const t = await target()
    const newKey = randomBytes(32).toString('hex')
    const cmd = start(['replicate', '--region', 'eu', '--target', t.url, '--nats', h.nats.url, '--namespace', ns, '--metrics-port', '0'],
      { REGIONSYNC_SIGNING_KEY: `${newKey},${SIGNING_KEY}` })
    const port = await cmd.metricsPort()
    const status = (await get(port, '/status')).body as { partitions: number }
    const byOld = newEvent()
    const byNew = newEvent()
    await new EventPublisher(await connection(), ns, status.partitions, SIGNING_KEY).publish(byOld)
    await new EventPublisher(await connection(), ns, status.partitions, newKey).publish(byNew)
    await waitFor('both events at the target', () => t.withKey(byOld.id).length === 1 && t.withKey(byNew.id).length === 1)
    expect(String(t.withKey(byNew.id)[0]!.headers['webhook-signature']).split(' ')).toHaveLength(2)
  })

  it('flags win over environment variables', async () => {
    const ns = uniqueNamespace()
    const t = await target()
    const cmd = start(['replicate', '--region', 'eu', '--target', t.url, '--target-token', 'flag-token', '--namespace', ns, '--metrics-port', '0'], {
      REGIONSYNC_REGION: 'ap',
      REGIONSYNC_TARGET_URL: 'not a url',
      REGIONSYNC_TARGET_TOKEN: 'env-token',
      REGIONSYNC_SIGNING_KEY: SIGNING_KEY,
      REGIONSYNC_NAMESPACE: 'other',
      REGIONSYNC_METRICS_PORT: '1',
      NATS_URL: h.nats.url
    })
    const port = await cmd.metricsPort()
    const status = (await get(port, '/status')).body as { region: string, partitions: number }
    expect(status.region).toBe('eu')

    await expectAppliedWithToken(t, ns, status.partitions, 'flag-token')
  })
})

describe('regionsync status', () => {
  it('prints one row per region with its pending events, as a table or as JSON', async () => {
    const ns = uniqueNamespace()
    const t = await target()
    const eu = await replicator('eu', ns, t.url)
    const ap = await replicator('ap', ns, `http://127.0.0.1:${await freePort()}`)
    await ap.close()
    const nc = await connection()
    const pub = new EventPublisher(nc, ns, eu.partitions, SIGNING_KEY)
    for (let i = 0; i < 3; i++) await pub.publish(newEvent({ resource: `users/${i}`, committedAt: new Date(Date.now() - 5000) }))
    const jsm = await jetstreamManager(nc)
    await waitFor('eu to catch up', async () => t.requests.length === 3 && (await regionLag(jsm, names(ns), 'eu', eu.partitions)).pending === 0)

    const table = await run(['status', '--nats', h.nats.url, '--namespace', ns])
    expect(table.code).toBe(0)
    const rows = table.stdout.trim().split('\n').map((l) => l.trim().split(/\s{2,}/))
    expect(rows[0]).toEqual(['REGION', 'INSTANCES', 'PENDING', 'LAG', 'APPLIED/S', 'DLQ', 'BREAKER', 'DIVERGENT', 'OWN WRITES', 'LAST ERROR'])
    expect(rows).toHaveLength(3)
    const ap3 = rows.find((r) => r[0] === 'ap')
    const eu0 = rows.find((r) => r[0] === 'eu')
    // ap has no live replicator: JetStream still tells its exact pending count and lag.
    expect(ap3?.slice(0, 3)).toEqual(['ap', 'none', '3'])
    expect(Number.parseFloat(ap3![3]!)).toBeGreaterThanOrEqual(5)
    expect(ap3?.slice(4, 7)).toEqual(['-', '0', '-'])
    expect(eu0?.slice(0, 4)).toEqual(['eu', '1', '0', '0.0s'])
    expect(eu0?.[6]).toBe('closed')

    const json = await run(['status', '--json'], { NATS_URL: h.nats.url, REGIONSYNC_NAMESPACE: ns })
    expect(json.code).toBe(0)
    const parsed = JSON.parse(json.stdout) as Array<{ region: string, pending: number, lagSeconds: number, oldestPendingAt: string | null, instances: Array<{ applied: number }> }>
    expect(parsed.map((r) => [r.region, r.pending, r.instances.length])).toEqual([['ap', 3, 0], ['eu', 0, 1]])
    expect(parsed[0]!.lagSeconds).toBeGreaterThanOrEqual(5)
    expect(parsed[0]!.oldestPendingAt).not.toBeNull()
    expect(parsed[1]!.oldestPendingAt).toBeNull()
    expect(parsed[1]!.instances[0]!.applied).toBe(3)
  })
})

describe('regionsync status: own writes', () => {
  it('counts a region\'s own writes as own writes, never as pending', async () => {
    const ns = uniqueNamespace()
    const t = await target()
    const eu = await replicator('eu', ns, t.url)
    const pub = new EventPublisher(await connection(), ns, eu.partitions, SIGNING_KEY)
    for (let i = 0; i < 2; i++) await pub.publish(newEvent({ origin: 'eu', resource: `users/own-${i}` }))
    const rows = await waitFor('eu to acknowledge its own writes', async () => {
      const res = await run(['status', '--json', '--nats', h.nats.url, '--namespace', ns])
      const parsed = JSON.parse(res.stdout) as Array<{ region: string, pending: number, ownOrigin: number | null }>
      return parsed[0]?.ownOrigin === 2 ? parsed : undefined
    })
    expect(rows).toMatchObject([{ region: 'eu', pending: 0, ownOrigin: 2 }])
    expect(t.requests).toHaveLength(0)
    const table = await run(['status', '--nats', h.nats.url, '--namespace', ns])
    const [header, row] = table.stdout.trim().split('\n').map((l) => l.trim().split(/\s{2,}/))
    expect(row?.[header?.indexOf('OWN WRITES') ?? -1]).toBe('2')
  })
})

describe('regionsync region remove', () => {
  it('removes a stopped region\'s consumers and records, so status no longer shows it; refuses a live region, and without --yes off a terminal', async () => {
    const ns = uniqueNamespace()
    const t = await target()
    const eu = await replicator('eu', ns, t.url)
    const ap = await replicator('ap', ns, t.url)
    const common = ['--nats', h.nats.url, '--namespace', ns]

    const live = await run(['region', 'remove', 'eu', '--yes', ...common])
    expect(live.code).toBe(2)
    expect(live.stderr).toContain('live replicator')
    await eu.close()
    const unconfirmed = await run(['region', 'remove', 'eu', ...common])
    expect(unconfirmed.code).toBe(2)
    expect(unconfirmed.stderr).toContain('--yes')

    const removed = await run(['region', 'remove', 'eu', '--yes', ...common])
    expect(removed.code).toBe(0)
    expect(removed.stdout).toContain(`region eu removed: ${eu.partitions} consumers`)
    const status = JSON.parse((await run(['status', '--json', ...common])).stdout) as Array<{ region: string }>
    expect(status.map((r) => r.region)).toEqual(['ap'])
    expect(ap.region).toBe('ap')
  })
})

describe('regionsync dlq list', () => {
  it('prints the region\'s dead letters, or says there are none', async () => {
    const ns = uniqueNamespace()
    const none = await run(['dlq', 'list', '--region', 'eu', '--nats', h.nats.url, '--namespace', ns])
    expect(none.code).toBe(0)
    expect(none.stdout.trim()).toBe('no dead letters for region eu')

    const t = await target(() => ({ status: 422, body: '{"error":"user.name must not be empty"}' }))
    const r = await replicator('eu', ns, t.url)
    const nc = await connection()
    const event = newEvent({ method: 'PATCH', path: '/v3/users/7', resource: 'users/7', body: '{"user":{"name":""}}' })
    await new EventPublisher(nc, ns, r.partitions, SIGNING_KEY).publish(event)
    const jsm = await jetstreamManager(nc)
    await waitFor('the dead letter', async () => (await listDeadLetters(jsm, names(ns), 'eu')).length === 1)

    const list = await run(['dlq', 'list', '--region', 'eu', '--nats', h.nats.url, '--namespace', ns])
    expect(list.code).toBe(0)
    const lines = list.stdout.trim().split('\n')
    expect(lines).toHaveLength(1)
    for (const part of ['rejected 422', event.id, 'PATCH /v3/users/7', 'user.name must not be empty']) expect(lines[0]).toContain(part)

    const json = await run(['dlq', 'list', '--region', 'eu', '--json', '--nats', h.nats.url, '--namespace', ns])
    const letters = JSON.parse(json.stdout) as Array<Record<string, unknown>>
    expect(letters).toHaveLength(1)
    expect(letters[0]).toMatchObject({ region: 'eu', reason: 'rejected', status: 422, eventId: event.id })
    expect(letters[0]).not.toHaveProperty('payload')

    const other = await run(['dlq', 'list', '--region', 'ap', '--nats', h.nats.url, '--namespace', ns])
    expect(other.stdout.trim()).toBe('no dead letters for region ap')
  })
})

describe('help', () => {
  const commands = [[], ['replicate'], ['status'], ['dlq'], ['dlq', 'list'], ['dlq', 'replay'], ['verify'], ['ids'], ['ids', 'map'], ['region'], ['region', 'remove'], ['demo']]

  it.each(commands.map((c) => [c.join(' ') || '(root)', c] as const))('%s --help prints its flags with their variables and the exit codes, and exits 0 without running', async (_name, command) => {
    const res = await run([...command, '--help'])
    expect(res.code).toBe(0)
    expect(res.stderr).toBe('')
    expect(res.stdout).toContain(`Usage: regionsync${command.length === 0 ? '' : ` ${command.join(' ')}`}`)
    expect(res.stdout).toContain('Exit codes:')
    expect(res.stdout).toContain('2  bad configuration')
  })

  it('replicate --help lists every flag with its environment variable', async () => {
    const res = await run(['replicate', '--help'])
    const help = res.stdout.replace(/\s+/g, ' ')
    for (const [f, env] of [['--region', 'REGIONSYNC_REGION'], ['--target', 'REGIONSYNC_TARGET_URL'], ['--nats', 'NATS_URL'], ['--namespace', 'REGIONSYNC_NAMESPACE'],
      ['--metrics-port', 'REGIONSYNC_METRICS_PORT'], ['--metrics-host', 'REGIONSYNC_METRICS_HOST'], ['--signing-key', 'REGIONSYNC_SIGNING_KEY'], ['--dev', 'REGIONSYNC_DEV'],
      ['--target-token', 'REGIONSYNC_TARGET_TOKEN'], ['--from', 'REGIONSYNC_FROM'], ['--window', 'REGIONSYNC_WINDOW']]) {
      expect(help).toContain(f)
      expect(help).toContain(`env: ${env as string}`)
    }
  })

  it('no command prints the usage on stderr and exits 2; an unknown command exits 2 with one line', async () => {
    const none = await run([])
    expect(none.code).toBe(2)
    expect(none.stderr).toContain('Usage: regionsync')
    const unknown = await run(['replicat'])
    expect(unknown.code).toBe(2)
    expect(unknown.stderr.trim().split('\n')).toHaveLength(1)
    expect(unknown.stderr).toContain('replicate')
  })

  it('REGIONSYNC_DEV=0 does not turn dev mode on', async () => {
    const res = await run(['replicate', '--region', 'eu', '--target', 'http://127.0.0.1:9', '--nats', h.nats.url], { REGIONSYNC_DEV: '0' })
    expect(res.code).toBe(2)
    expect(res.stderr).toContain('--signing-key')
  })
})
