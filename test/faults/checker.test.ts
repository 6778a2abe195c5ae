import type { IdentityState } from '@regionsync/examples'
import { describe, expect, it } from 'vitest'
import { Checker, type ClientWrite, type Op } from './checker.js'
import type { AnsweredReplay } from './region-api.js'

/*
 * The checker's zeros mean something only if it counts what it claims to. Each case here breaks
 * a region's log or state the way a bug would, and expects exactly that count.
 */

const EMPTY: IdentityState = { users: [], projects: [], grants: [] }

function user (id: string, name: string, email: string, enabled = true): IdentityState['users'][number] {
  return { id, name, email, passwordHash: null, enabled }
}

/** Three acknowledged writes of user u1: create, rename, rename again. */
function scenario (): { checker: Checker, writes: ClientWrite[], final: IdentityState } {
  const checker = new Checker('c')
  const ops: Op[] = [
    { kind: 'create-user', id: 'u1', name: 'a', email: 'u1@x', enabled: true },
    { kind: 'patch-user', id: 'u1', name: 'b' },
    { kind: 'patch-user', id: 'u1', name: 'c' }
  ]
  const writes = ops.map((op) => {
    const w = checker.begin(op)
    checker.settle(w, 'acked', 200)
    return w
  })
  return { checker, writes, final: { ...EMPTY, users: [user('u1', 'c', 'u1@x')] } }
}

let at = 1_000_000
function applied (w: ClientWrite, extra: Partial<AnsweredReplay> = {}): AnsweredReplay {
  return { wid: w.wid, eventId: `e-${w.wid}`, method: 'PATCH', url: `/x?w=${w.wid}`, status: 200, handled: true, at: ++at, ...extra }
}

describe('the checker', () => {
  it('counts nothing wrong for a region that applied every write once, in order', () => {
    const { checker, writes, final } = scenario()
    const report = checker.analyse({ source: final, regions: [{ name: 'eu', state: final, replays: writes.map((w) => applied(w)) }] })
    expect(report).toMatchObject({ acknowledged: 3, lost: 0, duplicated: 0, orderViolations: 0, foreign: 0, stateMismatches: 0, allEqual: true })
    expect(report.regions[0]).toMatchObject({ applied: 3, equalToSource: true })
  })

  it('counts a write never applied as lost, and the wrong state it leaves', () => {
    const { checker, writes } = scenario()
    const state = { ...EMPTY, users: [user('u1', 'b', 'u1@x')] }
    const report = checker.analyse({ source: null, regions: [{ name: 'eu', state, replays: [applied(writes[0]!), applied(writes[1]!)] }] })
    expect(report.lost).toBe(1)
    expect(report.stateMismatches).toBe(1)
    expect(report.regions[0]!.applied).toBe(2)
  })

  it('counts a wrong state that no missing write explains as lost too', () => {
    const { checker, writes } = scenario()
    const state = { ...EMPTY, users: [user('u1', 'b', 'u1@x')] }
    const report = checker.analyse({ source: null, regions: [{ name: 'eu', state, replays: writes.map((w) => applied(w)) }] })
    expect(report.lost).toBe(1)
  })

  it('counts a second application with effect as a duplicate, and not one the replay guard answered', () => {
    const { checker, writes, final } = scenario()
    const replays = [applied(writes[0]!), applied(writes[1]!), applied(writes[1]!, { handled: false }), applied(writes[1]!), applied(writes[2]!)]
    const report = checker.analyse({ source: final, regions: [{ name: 'eu', state: final, replays }] })
    expect(report.duplicated).toBe(1)
    expect(report.orderViolations).toBe(0)
  })

  it('counts a write applied after a later one of the same resource as an order violation', () => {
    const { checker, writes } = scenario()
    const state = { ...EMPTY, users: [user('u1', 'b', 'u1@x')] }
    const report = checker.analyse({ source: null, regions: [{ name: 'eu', state, replays: [applied(writes[0]!), applied(writes[2]!), applied(writes[1]!)] }] })
    expect(report.orderViolations).toBe(1)
    expect(report.lost).toBe(1)
  })

  it('ignores answers that are not 2xx, and counts applications of writes it never saw as foreign', () => {
    const { checker, writes, final } = scenario()
    const replays = [...writes.map((w) => applied(w)), applied(writes[0]!, { status: 429 }), { ...applied(writes[0]!), wid: 'forged' }, { ...applied(writes[0]!), wid: null }]
    const report = checker.analyse({ source: final, regions: [{ name: 'eu', state: final, replays }] })
    expect(report).toMatchObject({ duplicated: 0, foreign: 2, lost: 0 })
  })

  it('allows a write without an answer to be applied or not, but nothing else', () => {
    const checker = new Checker('c')
    const create = checker.begin({ kind: 'create-user', id: 'u1', name: 'a', email: 'u1@x', enabled: true })
    checker.settle(create, 'acked', 201)
    const unanswered = checker.begin({ kind: 'delete-user', id: 'u1' })
    checker.settle(unanswered, 'unknown', null)
    const refused = checker.begin({ kind: 'create-user', id: 'u2', name: 'z', email: 'u2@x', enabled: true })
    checker.settle(refused, 'failed', null)
    const withUser = { ...EMPTY, users: [user('u1', 'a', 'u1@x')] }
    const ok = checker.analyse({ source: null, regions: [{ name: 'eu', state: withUser, replays: [applied(create)] }, { name: 'ap', state: EMPTY, replays: [applied(create), applied(unanswered)] }] })
    expect(ok).toMatchObject({ lost: 0, stateMismatches: 0, foreign: 0, acknowledged: 1, unacknowledged: 1, failed: 1, allEqual: false })
    expect(ok.regions[1]!.unacknowledgedApplied).toBe(1)
    const bad = checker.analyse({ source: null, regions: [{ name: 'eu', state: { ...EMPTY, users: [user('u2', 'z', 'u2@x')] }, replays: [applied(create), applied(refused)] }] })
    expect(bad.foreign).toBe(1)
    expect(bad.stateMismatches).toBe(1)
  })

  it('measures recovery from a fault\'s end to the last write acknowledged before it being applied', () => {
    const checker = new Checker('c')
    const create = checker.begin({ kind: 'create-user', id: 'u1', name: 'a', email: 'u1@x', enabled: true })
    checker.settle(create, 'acked', 201)
    const fault = checker.fault('test')
    fault.end()
    const end = checker.faults[0]!.endedAt!
    const late = checker.analyse({ source: null, regions: [{ name: 'eu', state: { ...EMPTY, users: [user('u1', 'a', 'u1@x')] }, replays: [{ ...applied(create), at: end + 1500 }] }] })
    expect(late.recoveryMs).toBe(1500)
    const early = checker.analyse({ source: null, regions: [{ name: 'eu', state: { ...EMPTY, users: [user('u1', 'a', 'u1@x')] }, replays: [{ ...applied(create), at: end - 10 }] }] })
    expect(early.recoveryMs).toBe(0)
    const never = checker.analyse({ source: null, regions: [{ name: 'eu', state: EMPTY, replays: [] }] })
    expect(never.recoveryMs).toBe(Number.POSITIVE_INFINITY)
  })

  it('checks grants and projects as part of each resource\'s state', () => {
    const checker = new Checker('c')
    for (const op of [
      { kind: 'create-project', id: 'p1', name: 'ops', description: 'd' },
      { kind: 'create-user', id: 'u1', name: 'a', email: 'u1@x', enabled: true },
      { kind: 'grant', id: 'u1', project: 'p1', role: 'admin' },
      { kind: 'grant', id: 'u1', project: 'p1', role: 'reader' },
      { kind: 'revoke', id: 'u1', project: 'p1', role: 'admin' }
    ] satisfies Op[]) checker.settle(checker.begin(op), 'acked', 200)
    const good: IdentityState = { users: [user('u1', 'a', 'u1@x')], projects: [{ id: 'p1', name: 'ops', description: 'd' }], grants: ['u1/p1/reader'] }
    expect(checker.mismatches(good)).toEqual([])
    expect(checker.mismatches({ ...good, grants: ['u1/p1/admin', 'u1/p1/reader'] })).toHaveLength(1)
    expect(checker.mismatches({ ...good, projects: [] })).toHaveLength(1)
  })
})
