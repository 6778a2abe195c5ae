import { describe, expect, it } from 'vitest'
import type { Logger } from '@regionsync/shared'
import { PartitionWorker, type Entry, type PartitionWorkerDeps, type PullSource, type Step, type StoredEvent } from '../../services/replicator/src/partition-worker.js'
import { parseAckSubject } from '@regionsync/shared'
import { AckHandle, type Delivery, type PullRequest } from '../../services/replicator/src/pull-stream.js'

const silent = { info () {}, warn () {}, error () {}, debug () {}, child () { return silent } } as unknown as Logger

/** An ack handle that writes what it was told into `answers`, as the server would see it. */
function handle (answers: string[], seq: number): AckHandle {
  const fake = { publish: (_subject: string, body: string) => { answers.push(`${seq}:${body.split(' ')[0] as string}`) } }
  const writes = { defer: (fn: () => void) => fn() }
  return new AckHandle(fake as never, writes as never, `$JS.ACK.S.C.1.${seq}.${seq}.0.0`)
}

/** A pull source that hands out the queued messages when asked, as many as the pull asks for. */
class FakePulls implements PullSource {
  readonly queue: Array<{ seq: number, key: string, deliveryCount?: number, lost?: boolean }> = []
  /** The consumer's delivery counter: a lost delivery takes a number too. */
  consumerSeq = 0
  readonly pullsAsked: PullRequest[] = []
  onDelivery: (d: Delivery) => void = () => {}
  answers: string[] = []
  requested = 0
  live = 0
  allExpireAt = 0
  pull (r: PullRequest): void {
    this.pullsAsked.push(r)
    const batch = this.queue.splice(0, r.batch)
    queueMicrotask(() => {
      for (const m of batch) {
        const consumerSeq = ++this.consumerSeq
        if (m.lost !== true) this.onDelivery({ seq: m.seq, deliveryCount: m.deliveryCount ?? 1, consumerSeq, subject: 's', data: Buffer.from(m.key), headers: undefined, handle: handle(this.answers, m.seq) })
      }
    })
  }

  stop (): void {}
  close (): void {}
}

interface Harness {
  worker: PartitionWorker
  pulls: FakePulls
  /** Per key, the sequences in the order they were applied. */
  applied: Map<string, number[]>
  settled: number[]
  owns: { value: boolean }
  fencedCalls: number[]
  /** The stream reads for lost deliveries: (after, before). */
  reads: Array<[number, number]>
}

function harness (o: { window?: number, run?: (e: Entry) => Promise<Step>, outstanding?: StoredEvent[], isApplied?: (e: Entry) => boolean, stream?: StoredEvent[] } = {}): Harness {
  const pulls = new FakePulls()
  const applied = new Map<string, number[]>()
  const settled: number[] = []
  const owns = { value: true }
  const fencedCalls: number[] = []
  const reads: Array<[number, number]> = []
  const deps: PartitionWorkerDeps = {
    partition: 3,
    window: () => o.window ?? 8,
    ackWaitMs: 30_000,
    owns: () => owns.value,
    fenced: () => { fencedCalls.push(Date.now()) },
    validForMs: () => (owns.value ? 2000 : 0),
    decode: (data) => ({ key: Buffer.from(data).toString(), decoded: null }),
    isApplied: async (e) => o.isApplied?.(e) ?? false,
    run: o.run ?? (async (e) => {
      // Different keys take different times, so lanes finish out of stream order.
      await new Promise((resolve) => setTimeout(resolve, e.key === 'slow' ? 20 : 1))
      applied.set(e.key, [...(applied.get(e.key) ?? []), e.seq])
      return { kind: 'done' }
    }),
    settle: async (e) => { settled.push(e.seq) },
    outstanding: async () => o.outstanding ?? [],
    between: async (after, before) => {
      reads.push([after, before])
      return (o.stream ?? []).filter((s) => s.seq > after && s.seq < before)
    },
    pulls: (h) => { pulls.onDelivery = h.onDelivery; return pulls },
    log: silent
  }
  return { worker: new PartitionWorker(deps), pulls, applied, settled, owns, fencedCalls, reads }
}

async function until (what: string, cond: () => boolean, ms = 2000): Promise<void> {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
}

describe('partition worker: lanes and window', () => {
  it('applies each key in stream order while keys overtake each other, and acks every event once it is settled', async () => {
    const h = harness({ window: 8 })
    const keys = ['slow', 'a', 'b', 'slow', 'a', 'slow', 'b', 'a', 'slow', 'c']
    keys.forEach((key, i) => h.pulls.queue.push({ seq: i + 1, key }))
    await h.worker.start()
    await until('every event settled', () => h.settled.length === keys.length)
    expect(h.applied.get('slow')).toEqual([1, 4, 6, 9])
    expect(h.applied.get('a')).toEqual([2, 5, 8])
    expect(h.applied.get('b')).toEqual([3, 7])
    // Fast keys finished before the slow key's first event: the lanes really ran side by side.
    expect(h.settled.indexOf(2)).toBeLessThan(h.settled.indexOf(1))
    await until('every ack', () => h.pulls.answers.length === keys.length)
    expect(h.pulls.answers.every((a) => a.endsWith(':+ACK'))).toBe(true)
    await h.worker.stop('release', 0)
  })

  it('never asks for more than its window', async () => {
    const h = harness({ window: 4, run: async () => await new Promise(() => {}) })
    for (let i = 1; i <= 20; i++) h.pulls.queue.push({ seq: i, key: `k${i}` })
    await h.worker.start()
    await until('the window to fill', () => h.worker.held === 4)
    await new Promise((resolve) => setTimeout(resolve, 300))
    expect(h.worker.held).toBe(4)
    expect(h.pulls.pullsAsked.reduce((n, r) => n + r.batch, 0)).toBe(4)
  })

  it('a retrying event holds back only its own key', async () => {
    let tries = 0
    const h = harness({
      run: async (e) => {
        if (e.key === 'bad' && ++tries < 3) return { kind: 'retry', delayMs: 30 }
        h.applied.set(e.key, [...(h.applied.get(e.key) ?? []), e.seq])
        return { kind: 'done' }
      }
    })
    h.pulls.queue.push({ seq: 1, key: 'bad' }, { seq: 2, key: 'ok' }, { seq: 3, key: 'bad' }, { seq: 4, key: 'ok' })
    await h.worker.start()
    await until('ok applied', () => h.applied.get('ok')?.length === 2)
    expect(h.applied.get('bad')).toBeUndefined()
    await until('bad applied after its retries', () => h.applied.get('bad')?.length === 2)
    expect(h.applied.get('bad')).toEqual([1, 3])
    await h.worker.stop('release', 0)
  })

  it('events the previous owner left are applied first, each before any later event of its key', async () => {
    const h = harness({
      outstanding: [{ seq: 5, subject: 's', data: Buffer.from('x'), signature: undefined }, { seq: 7, subject: 's', data: Buffer.from('y'), signature: undefined }]
    })
    h.pulls.queue.push({ seq: 9, key: 'x' }, { seq: 10, key: 'y' })
    await h.worker.start()
    await until('all applied', () => h.settled.length === 4)
    expect(h.applied.get('x')).toEqual([5, 9])
    expect(h.applied.get('y')).toEqual([7, 10])
    // Read from the stream, not delivered: nothing to acknowledge for them until their redelivery.
    expect(h.pulls.answers.sort()).toEqual(['10:+ACK', '9:+ACK'])
    await h.worker.stop('release', 0)
  })

  it('a redelivery of an event it already holds is not applied twice', async () => {
    let started = 0
    let release: () => void = () => {}
    const h = harness({
      run: async (e) => {
        started++
        await new Promise<void>((resolve) => { release = resolve })
        h.applied.set(e.key, [...(h.applied.get(e.key) ?? []), e.seq])
        return { kind: 'done' }
      }
    })
    h.pulls.queue.push({ seq: 1, key: 'k' })
    await h.worker.start()
    await until('the first delivery to start', () => started === 1)
    h.pulls.onDelivery({ seq: 1, deliveryCount: 2, consumerSeq: ++h.pulls.consumerSeq, subject: 's', data: Buffer.from('k'), headers: undefined, handle: handle(h.pulls.answers, 1) })
    release()
    await until('settled', () => h.settled.length === 1)
    await new Promise((resolve) => setTimeout(resolve, 50))
    expect(started).toBe(1)
    expect(h.applied.get('k')).toEqual([1])
    await h.worker.stop('release', 0)
  })

  it('found applied on a check (a redelivery), an event is acknowledged without a replay', async () => {
    let runs = 0
    const h = harness({ isApplied: (e) => e.seq === 1, run: async () => { runs++; return { kind: 'done' } } })
    h.pulls.queue.push({ seq: 1, key: 'k', deliveryCount: 2 }, { seq: 2, key: 'k' })
    await h.worker.start()
    await until('both acked', () => h.pulls.answers.length === 2)
    expect(runs).toBe(1)
    await h.worker.stop('release', 0)
  })

  it('when ownership lapses, nothing more is applied, held events are handed back, and the partition is given up', async () => {
    const h = harness({ run: async () => await new Promise<Step>((resolve) => setTimeout(() => resolve({ kind: 'retry', delayMs: 10 }), 5)) })
    h.pulls.queue.push({ seq: 1, key: 'k' }, { seq: 2, key: 'k' }, { seq: 3, key: 'j' })
    await h.worker.start()
    await until('all held', () => h.worker.held === 3)
    h.owns.value = false
    await until('the partition given up', () => h.fencedCalls.length > 0)
    await h.worker.stop('lost', 0)
    expect(h.settled).toEqual([])
    expect(h.pulls.answers.filter((a) => a.endsWith(':-NAK')).map((a) => Number(a.split(':')[0])).sort()).toEqual([1, 2, 3])
  })
})

describe('partition worker: a delivery that never arrived', () => {
  const stored = (seq: number, key: string): StoredEvent => ({ seq, subject: 's', data: Buffer.from(key), signature: undefined })

  it('is read from the stream and applied before the later events of its key, without waiting for its redelivery', async () => {
    // Events 2 and 5 of key k are delivered (numbered by the consumer) but lost on the way.
    const events = [stored(1, 'k'), stored(2, 'k'), stored(3, 'j'), stored(4, 'k'), stored(5, 'k'), stored(6, 'k')]
    const h = harness({ stream: events })
    h.pulls.queue.push({ seq: 1, key: 'k' }, { seq: 2, key: 'k', lost: true }, { seq: 3, key: 'j' }, { seq: 4, key: 'k' }, { seq: 5, key: 'k', lost: true }, { seq: 6, key: 'k' })
    await h.worker.start()
    await until('every event applied', () => h.settled.length === 6)
    expect(h.applied.get('k')).toEqual([1, 2, 4, 5, 6])
    expect(h.applied.get('j')).toEqual([3])
    expect(h.reads).toEqual([[1, 3], [4, 6]])
    // The lost ones are acknowledged when the server sends them again, not before.
    await until('the delivered ones acked', () => h.pulls.answers.length === 4)
    expect(h.pulls.answers.map((a) => Number(a.split(':')[0])).sort()).toEqual([1, 3, 4, 6])
    await h.worker.stop('release', 0)
  })

  it('its redelivery after the ack wait is acknowledged without applying it again', async () => {
    const h = harness({ stream: [stored(1, 'k'), stored(2, 'k'), stored(3, 'k')], isApplied: (e) => e.seq === 2 && e.deliveryCount > 1 })
    h.pulls.queue.push({ seq: 1, key: 'k' }, { seq: 2, key: 'k', lost: true }, { seq: 3, key: 'k' })
    await h.worker.start()
    await until('all three applied', () => h.settled.length === 3)
    h.pulls.queue.push({ seq: 2, key: 'k', deliveryCount: 2 })
    h.worker.reverify()
    await until('the redelivery acked', () => h.pulls.answers.includes('2:+ACK'))
    expect(h.applied.get('k')).toEqual([1, 2, 3])
    await h.worker.stop('release', 0)
  })

  it('a new consumer leader numbering deliveries from lower down is no loss', async () => {
    const h = harness({ stream: [stored(1, 'k'), stored(2, 'k')] })
    h.pulls.queue.push({ seq: 1, key: 'k' }, { seq: 2, key: 'k' })
    await h.worker.start()
    await until('both applied', () => h.settled.length === 2)
    // The new leader starts again at 1 and resends what it did not know was delivered.
    h.pulls.consumerSeq = 0
    h.pulls.queue.push({ seq: 3, key: 'k' })
    h.worker.reverify()
    await until('the third applied', () => h.settled.length === 3)
    expect(h.applied.get('k')).toEqual([1, 2, 3])
    expect(h.reads).toEqual([])
    await h.worker.stop('release', 0)
  })
})

describe('ack subjects', () => {
  it('reads the stream sequence, delivery count and consumer sequence from the old and the new reply subject forms', () => {
    expect(parseAckSubject('$JS.ACK.EV.c1.3.1042.77.1700000000000000000.5')).toEqual({ seq: 1042, deliveryCount: 3, consumerSeq: 77 })
    expect(parseAckSubject('$JS.ACK.dom.ACCHASH.EV.c1.2.99.12.1700000000000000000.0.xyz')).toEqual({ seq: 99, deliveryCount: 2, consumerSeq: 12 })
    expect(parseAckSubject('$JS.API.CONSUMER.INFO.EV.c1')).toBeNull()
    expect(parseAckSubject('_INBOX.abc')).toBeNull()
  })
})
