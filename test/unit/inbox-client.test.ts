import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { headers as natsHeaders, type Msg, type MsgHdrs, type NatsConnection } from '@nats-io/transport-node'
import { ErrorCode, InboxClient, isRegionsyncError } from '@regionsync/shared'

interface Sent { subject: string, data: Uint8Array, reply: string, headers: MsgHdrs | undefined }

/** The part of a NATS connection the inbox client uses: one subscription and publish. */
function fakeConnection (): { nc: NatsConnection, sent: Sent[], answer: (to: Sent, data: string, code?: number) => void, unsubscribed: () => boolean } {
  const sent: Sent[] = []
  let deliver: ((err: Error | null, msg: Msg) => void) | null = null
  let unsubscribed = false
  const nc = {
    subscribe: (_subject: string, opts: { callback: (err: Error | null, msg: Msg) => void }) => {
      deliver = opts.callback
      return { unsubscribe: () => { unsubscribed = true } }
    },
    publish: (subject: string, data: Uint8Array, opts: { reply: string, headers?: MsgHdrs }) => {
      sent.push({ subject, data, reply: opts.reply, headers: opts.headers })
    }
  } as unknown as NatsConnection
  const answer = (to: Sent, data: string, code?: number): void => {
    const h = code === undefined ? undefined : natsHeaders(code, 'No Responders')
    const msg = {
      subject: to.reply,
      data: Buffer.from(data),
      headers: h,
      json: <T>() => JSON.parse(data) as T,
      string: () => data
    } as unknown as Msg
    deliver?.(null, msg)
  }
  return { nc, sent, answer, unsubscribed: () => unsubscribed }
}

describe('inbox client', () => {
  beforeEach(() => { vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'setImmediate', 'Date'] }) })
  afterEach(() => { vi.useRealTimers() })

  it('sends requests at the end of the turn, each with its own reply subject, and resolves each with its own answer', async () => {
    const c = fakeConnection()
    const client = new InboxClient(c.nc)
    const one = client.request('a.one', Buffer.from('1'), 1000)
    const two = client.request('a.two', Buffer.from('2'), 1000, { 'x-h': 'v' })
    expect(c.sent).toHaveLength(0)
    await vi.advanceTimersByTimeAsync(0)
    expect(c.sent.map((s) => s.subject)).toEqual(['a.one', 'a.two'])
    expect(c.sent[1]?.headers?.get('x-h')).toBe('v')
    c.answer(c.sent[1] as Sent, 'second')
    c.answer(c.sent[0] as Sent, 'first')
    expect((await one).string()).toBe('first')
    expect((await two).string()).toBe('second')
    client.close()
  })

  it('rejects a request with no answer by its deadline; a late answer is ignored', async () => {
    const c = fakeConnection()
    const client = new InboxClient(c.nc)
    const slow = client.request('a.slow', Buffer.alloc(0), 200)
    const failed = slow.catch((err: unknown) => err)
    await vi.advanceTimersByTimeAsync(300)
    const err = await failed
    expect(isRegionsyncError(err, ErrorCode.Publish)).toBe(true)
    c.answer(c.sent[0] as Sent, 'late')
    client.close()
  })

  it('publish resolves with JetStream\'s ack, sets Nats-Msg-Id, and fails on no stream or a refusal', async () => {
    const c = fakeConnection()
    const client = new InboxClient(c.nc)
    const ok = client.publish('ev.1', Buffer.from('{}'), { msgId: 'id-1', timeoutMs: 1000 })
    const none = client.publish('ev.2', Buffer.from('{}'), { timeoutMs: 1000 }).catch((err: unknown) => err)
    const refused = client.publish('ev.3', Buffer.from('{}'), { timeoutMs: 1000 }).catch((err: unknown) => err)
    await vi.advanceTimersByTimeAsync(0)
    expect(c.sent[0]?.headers?.get('Nats-Msg-Id')).toBe('id-1')
    c.answer(c.sent[0] as Sent, JSON.stringify({ stream: 'EV', seq: 7, duplicate: true }))
    c.answer(c.sent[1] as Sent, '', 503)
    c.answer(c.sent[2] as Sent, JSON.stringify({ error: { code: 400, description: 'bad' } }))
    expect(await ok).toEqual({ stream: 'EV', seq: 7, duplicate: true })
    expect(await none).toMatchObject({ code: ErrorCode.Publish, message: 'no JetStream stream answered for this subject' })
    expect(await refused).toMatchObject({ code: ErrorCode.Publish, message: 'JetStream refused the message: bad (400)' })
    client.close()
  })

  it('close rejects what is pending as closed, sends nothing more and unsubscribes', async () => {
    const c = fakeConnection()
    const client = new InboxClient(c.nc)
    const pending = client.request('a.b', Buffer.alloc(0), 1000).catch((err: unknown) => err)
    client.close()
    expect(await pending).toMatchObject({ code: ErrorCode.Closed })
    await vi.advanceTimersByTimeAsync(0)
    expect(c.sent).toHaveLength(0)
    expect(c.unsubscribed()).toBe(true)
  })
})
