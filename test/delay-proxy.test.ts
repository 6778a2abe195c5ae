import { randomBytes } from 'node:crypto'
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { afterEach, describe, expect, it } from 'vitest'
import { DelayProxy } from './helpers/delay-proxy.js'

const DELAY_MS = 50

const servers: Server[] = []
const serverSockets = new Set<Socket>()
const proxies: DelayProxy[] = []
const sockets: Socket[] = []
afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy()
  for (const p of proxies.splice(0)) await p.close()
  for (const s of serverSockets) s.destroy()
  for (const s of servers.splice(0)) await new Promise((resolve) => s.close(resolve))
})

/** A real echo server; on the client's FIN it sends `bye` and ends its side too (half-close). */
async function echoServer (): Promise<{ host: string, port: number }> {
  const server = createServer({ allowHalfOpen: true }, (s) => {
    serverSockets.add(s)
    s.once('close', () => serverSockets.delete(s))
    s.on('data', (d) => s.write(d))
    s.on('end', () => s.end('bye'))
    s.on('error', () => {})
  })
  servers.push(server)
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return { host: '127.0.0.1', port: (server.address() as AddressInfo).port }
}

async function startProxy (delayMs = DELAY_MS, extra: { maxQueuedBytes?: number, maxLifetimeMs?: number } = {}): Promise<DelayProxy> {
  const p = await DelayProxy.start({ target: await echoServer(), delayMs, ...extra })
  proxies.push(p)
  return p
}

async function open (port: number): Promise<Socket> {
  const s = connect({ port, host: '127.0.0.1', allowHalfOpen: true, noDelay: true })
  sockets.push(s)
  await new Promise<void>((resolve, reject) => { s.once('connect', resolve); s.once('error', reject) })
  return s
}

/** Reads from `s` until `bytes` have arrived; resolves with them and the time it took. */
async function receive (s: Socket, bytes: number): Promise<Buffer> {
  const chunks: Buffer[] = []
  let got = 0
  return await new Promise<Buffer>((resolve, reject) => {
    const onData = (d: Buffer): void => {
      chunks.push(d)
      got += d.length
      if (got >= bytes) { s.off('data', onData); resolve(Buffer.concat(chunks)) }
    }
    s.on('data', onData)
    s.once('error', reject)
  })
}

async function roundTripMs (s: Socket): Promise<number> {
  const t0 = performance.now()
  const answer = receive(s, 4)
  s.write('ping')
  await answer
  return performance.now() - t0
}

describe('DelayProxy', () => {
  it('adds its delay in each direction: a round trip through it takes twice the delay', async () => {
    const proxy = await startProxy()
    const s = await open(proxy.port)
    await roundTripMs(s)
    const rtts = []
    for (let i = 0; i < 5; i++) rtts.push(await roundTripMs(s))
    // Never less than the delay both ways; the median near it (a shared machine may be late on one).
    for (const rtt of rtts) expect(rtt).toBeGreaterThanOrEqual(2 * DELAY_MS - 1)
    expect(rtts.sort((a, b) => a - b)[2]).toBeLessThan(2 * DELAY_MS + 40)
  })

  it('does not hold one message at a time: writes sent 5 ms apart come back 5 ms apart, one delay later', async () => {
    const proxy = await startProxy()
    const s = await open(proxy.port)
    const messages = 40
    const arrivals: number[] = []
    let buffered = ''
    s.on('data', (d: Buffer) => {
      buffered += d.toString()
      while (buffered.includes('\n')) { buffered = buffered.slice(buffered.indexOf('\n') + 1); arrivals.push(performance.now()) }
    })
    const t0 = performance.now()
    for (let i = 0; i < messages; i++) {
      s.write(`m${i}\n`)
      await new Promise((resolve) => setTimeout(resolve, 5))
    }
    while (arrivals.length < messages) await new Promise((resolve) => setTimeout(resolve, 5))
    const total = (arrivals.at(-1) as number) - t0
    // Serialised, 40 round trips would take 4 s; pipelined, the sending time plus one round trip.
    expect(total).toBeLessThan(messages * 5 * 2 + 2 * DELAY_MS + 300)
    expect(total).toBeGreaterThanOrEqual(2 * DELAY_MS)
  })

  it('does not make connections wait for each other: 30 at once each take one round trip', async () => {
    const proxy = await startProxy()
    const conns = await Promise.all(Array.from({ length: 30 }, async () => await open(proxy.port)))
    const t0 = performance.now()
    await Promise.all(conns.map(async (s) => await roundTripMs(s)))
    // Serialised, 30 round trips would take 3 s.
    expect(performance.now() - t0).toBeLessThan(2 * DELAY_MS + 400)
    expect(proxy.stats.connections).toBe(30)
  })

  it('keeps order and every byte: 8 MB each way, with a queue bound far below it', async () => {
    const proxy = await startProxy(20, { maxQueuedBytes: 256 * 1024 })
    const s = await open(proxy.port)
    const data = randomBytes(8 * 1024 * 1024)
    const back = receive(s, data.length)
    s.write(data)
    expect((await back).equals(data)).toBe(true)
    expect(proxy.stats.bytesUp).toBe(data.length)
    expect(proxy.stats.bytesDown).toBe(data.length)
    // Reading stops at the bound; what is already read (a chunk or a socket's worth) may exceed it.
    expect(proxy.stats.peakQueuedBytes).toBeLessThan(256 * 1024 + 2 * 1024 * 1024)
  })

  it('passes a half-close on after the delay, and the other direction keeps flowing', async () => {
    const proxy = await startProxy()
    const s = await open(proxy.port)
    let text = ''
    s.on('data', (d: Buffer) => { text += d.toString() })
    const ended = new Promise<number>((resolve) => s.once('end', () => resolve(performance.now())))
    s.write('last words')
    const t0 = performance.now()
    s.end()
    const endedAt = await ended
    expect(text).toBe('last wordsbye')
    expect(endedAt - t0).toBeGreaterThanOrEqual(2 * DELAY_MS - 1)
    await new Promise((resolve) => setTimeout(resolve, 50))
    expect(proxy.stats.open).toBe(0)
  })

  it('resets the client when the target is gone, after the delay', async () => {
    const proxy = await DelayProxy.start({ target: { host: '127.0.0.1', port: (await echoServer()).port }, delayMs: DELAY_MS })
    proxies.push(proxy)
    for (const s of servers.splice(0)) await new Promise((resolve) => s.close(resolve))
    const s = await open(proxy.port)
    const t0 = performance.now()
    const error = new Promise<string | undefined>((resolve) => s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code)))
    await new Promise<void>((resolve) => s.once('close', () => resolve()))
    expect(performance.now() - t0).toBeGreaterThanOrEqual(DELAY_MS - 1)
    expect(await error).toBe('ECONNRESET')
  })

  it('closes itself after its lifetime: connections dropped, new ones refused', async () => {
    const proxy = await startProxy(DELAY_MS, { maxLifetimeMs: 300 })
    const s = await open(proxy.port)
    s.on('error', () => {})
    await new Promise<void>((resolve) => s.once('close', () => resolve()))
    await expect(open(proxy.port)).rejects.toThrow(/ECONNREFUSED/)
  })
})
