import type { IdentityState } from '@regionsync/examples'
import type { AnsweredReplay } from './region-api.js'

/*
 * The checker knows every write the client sent, per resource and in the order the client sent
 * it (one write at a time per resource, so that is the source's order too), and which of them the
 * client saw succeed. After a run it reads each region's final state and the log of replays the
 * region applied, and counts what a user would call broken: an acknowledged write missing or wrong
 * somewhere (lost), a write applied twice (duplicated), a resource's writes applied out of order
 * (order violations), and how long the regions took to catch up once a fault ended.
 */

/** One write of the workload, on the example identity API. */
export type Op =
  | { kind: 'create-user', id: string, name: string, email: string, enabled: boolean }
  | { kind: 'patch-user', id: string, name: string, email?: string, enabled?: boolean }
  | { kind: 'delete-user', id: string }
  | { kind: 'grant', id: string, project: string, role: string }
  | { kind: 'revoke', id: string, project: string, role: string }
  | { kind: 'create-project', id: string, name: string, description: string }

/** The resource an op writes: what its order is kept for. */
export function keyOf (op: Op): string {
  return op.kind === 'create-project' ? `project:${op.id}` : `user:${op.id}`
}

/** The HTTP request of an op; `?w=<write id>` rides along in the query, which events replay as is. */
export function requestOf (op: Op, wid: string): { method: 'POST' | 'PATCH' | 'PUT' | 'DELETE', path: string, body?: unknown } {
  const w = `?w=${encodeURIComponent(wid)}`
  switch (op.kind) {
    case 'create-user': return { method: 'POST', path: `/v3/users${w}`, body: { user: { id: op.id, name: op.name, email: op.email, enabled: op.enabled } } }
    case 'patch-user': {
      const user: Record<string, unknown> = { name: op.name }
      if (op.email !== undefined) user.email = op.email
      if (op.enabled !== undefined) user.enabled = op.enabled
      return { method: 'PATCH', path: `/v3/users/${op.id}${w}`, body: { user } }
    }
    case 'delete-user': return { method: 'DELETE', path: `/v3/users/${op.id}${w}` }
    case 'grant': return { method: 'PUT', path: `/v3/projects/${op.project}/users/${op.id}/roles/${op.role}${w}` }
    case 'revoke': return { method: 'DELETE', path: `/v3/projects/${op.project}/users/${op.id}/roles/${op.role}${w}` }
    case 'create-project': return { method: 'POST', path: `/v3/projects${w}`, body: { project: { id: op.id, name: op.name, description: op.description } } }
  }
}

interface UserFields { id: string, name: string, email: string | null, enabled: boolean }
interface ProjectFields { id: string, name: string, description: string }

/** What one resource looks like in a region: a user with its grants, or a project. */
export interface KeyState {
  user?: UserFields | null
  grants?: string[]
  project?: ProjectFields | null
}

function applyOp (s: KeyState, op: Op): KeyState {
  switch (op.kind) {
    case 'create-user': return { user: { id: op.id, name: op.name, email: op.email, enabled: op.enabled }, grants: [] }
    case 'patch-user': {
      if (s.user === null || s.user === undefined) return s
      const user = { ...s.user, name: op.name }
      if (op.email !== undefined) user.email = op.email
      if (op.enabled !== undefined) user.enabled = op.enabled
      return { ...s, user }
    }
    case 'delete-user': return { user: null, grants: [] }
    case 'grant': {
      const g = `${op.id}/${op.project}/${op.role}`
      return { ...s, grants: [...new Set([...(s.grants ?? []), g])].sort() }
    }
    case 'revoke': {
      const g = `${op.id}/${op.project}/${op.role}`
      return { ...s, grants: (s.grants ?? []).filter((x) => x !== g) }
    }
    case 'create-project': return { project: { id: op.id, name: op.name, description: op.description } }
  }
}

function emptyState (key: string): KeyState {
  return key.startsWith('project:') ? { project: null } : { user: null, grants: [] }
}

/** One resource as a region's `/_state` shows it. */
export function keyStateIn (state: IdentityState, key: string): KeyState {
  const [kind, id] = [key.slice(0, key.indexOf(':')), key.slice(key.indexOf(':') + 1)]
  if (kind === 'project') {
    const p = state.projects.find((x) => x.id === id)
    return { project: p === undefined ? null : { id: p.id, name: p.name, description: p.description } }
  }
  const u = state.users.find((x) => x.id === id)
  return {
    user: u === undefined ? null : { id: u.id, name: u.name, email: u.email, enabled: u.enabled },
    grants: state.grants.filter((g) => g.startsWith(`${id}/`)).sort()
  }
}

/** Every resource key a region's state holds anything for. */
function keysIn (state: IdentityState): Set<string> {
  return new Set([
    ...state.users.map((u) => `user:${u.id}`),
    ...state.grants.map((g) => `user:${g.slice(0, g.indexOf('/'))}`),
    ...state.projects.map((p) => `project:${p.id}`)
  ])
}

const same = (a: KeyState, b: KeyState): boolean => JSON.stringify(a) === JSON.stringify(b)

/**
 * What became of one write as the client saw it: `acked` (2xx), `failed` (certainly not applied:
 * connection refused, or refused before its handler ran), `unknown` (no answer, or an answer that
 * does not say; the client stops writing that resource), `pending` (not answered yet).
 */
export type Outcome = 'pending' | 'acked' | 'failed' | 'unknown'

export interface ClientWrite {
  wid: string
  key: string
  /** Position among the key's writes, in the order the client sent them. */
  index: number
  op: Op
  sentAt: number
  settledAt: number | null
  status: number | null
  outcome: Outcome
  detail?: string
}

export interface FaultEpisode {
  name: string
  startedAt: number
  endedAt: number | null
}

export interface RegionReport {
  region: string
  /** Acknowledged writes the region applied (its handler ran, 2xx). */
  applied: number
  /** Acknowledged writes it never applied, plus resources whose final state is wrong otherwise. */
  lost: number
  /** Extra applications: a write whose handler ran with a 2xx more than once. */
  duplicated: number
  /** Applications that came after a later write of the same resource. */
  orderViolations: number
  /** Applications of writes the client never sent, or was told failed. */
  foreign: number
  /** Resources whose final state is none the client's writes allow. */
  stateMismatches: number
  /** Unacknowledged writes (no answer) that the region applied: allowed, counted for the record. */
  unacknowledgedApplied: number
  /** Per fault, ms from its end until every write acknowledged before then was applied here. */
  recoveryMs: number[]
  /** Per fault, the write that took longest to arrive after it ended, for the curious. */
  recoveryBy: string[]
  /** The region's final state equals the source's; null when the source's state is not the reference. */
  equalToSource: boolean | null
  /** Up to 10 examples of what went wrong, for failure messages. */
  problems: string[]
}

export interface CheckReport {
  acknowledged: number
  unacknowledged: number
  failed: number
  regions: RegionReport[]
  lost: number
  duplicated: number
  orderViolations: number
  foreign: number
  stateMismatches: number
  /** Worst time to recover over every fault and region, in ms. */
  recoveryMs: number
  /** Resources where the source's own state disagrees with what the client saw acknowledged. */
  sourceMismatches: number
  /** Every region (and the source, when it is the reference) holds the same data. */
  allEqual: boolean
  problems: string[]
}

export interface RegionView {
  name: string
  state: IdentityState
  replays: readonly AnsweredReplay[]
}

export class Checker {
  readonly writes = new Map<string, ClientWrite>()
  readonly faults: FaultEpisode[] = []
  readonly #byKey = new Map<string, ClientWrite[]>()
  readonly #prefix: string
  #next = 0

  /** `prefix` makes write ids unique to this run. */
  constructor (prefix: string) {
    this.#prefix = prefix
  }

  /** Records a write as the client sends it; returns its record, with its write id. */
  begin (op: Op): ClientWrite {
    const key = keyOf(op)
    const list = this.#byKey.get(key) ?? []
    const w: ClientWrite = { wid: `${this.#prefix}-${++this.#next}`, key, index: list.length, op, sentAt: Date.now(), settledAt: null, status: null, outcome: 'pending' }
    list.push(w)
    this.#byKey.set(key, list)
    this.writes.set(w.wid, w)
    return w
  }

  settle (w: ClientWrite, outcome: Exclude<Outcome, 'pending'>, status: number | null, detail?: string): void {
    w.outcome = outcome
    w.status = status
    w.settledAt = Date.now()
    if (detail !== undefined) w.detail = detail
  }

  /** Marks a fault's start; call `end()` on the result when the fault is removed. */
  fault (name: string): { end: () => void } {
    const episode: FaultEpisode = { name, startedAt: Date.now(), endedAt: null }
    this.faults.push(episode)
    return { end: () => { episode.endedAt ??= Date.now() } }
  }

  get acknowledged (): number {
    let n = 0
    for (const w of this.writes.values()) if (w.outcome === 'acked') n++
    return n
  }

  /** Write ids the client saw succeed. */
  ackedIds (): string[] {
    return [...this.writes.values()].filter((w) => w.outcome === 'acked').map((w) => w.wid)
  }

  /**
   * Per resource, the states its writes allow: the acknowledged ones applied in order, or, when
   * its last write got no answer, those plus that one.
   */
  expected (): Map<string, KeyState[]> {
    const out = new Map<string, KeyState[]>()
    for (const [key, list] of this.#byKey) {
      let acked = emptyState(key)
      let unknown: Op | null = null
      for (const w of list) {
        if (w.outcome === 'acked') acked = applyOp(acked, w.op)
        else if (w.outcome === 'unknown' || w.outcome === 'pending') unknown = w.op
      }
      out.set(key, unknown === null ? [acked] : [acked, applyOp(acked, unknown)])
    }
    return out
  }

  /** Resources where `state` holds something none of the client's writes allow. */
  mismatches (state: IdentityState): string[] {
    const expected = this.expected()
    const out: string[] = []
    for (const key of new Set([...expected.keys(), ...keysIn(state)])) {
      const have = keyStateIn(state, key)
      const allowed = expected.get(key) ?? [emptyState(key)]
      if (!allowed.some((s) => same(s, have))) out.push(`${key}: has ${JSON.stringify(have)}, client allows ${allowed.map((s) => JSON.stringify(s)).join(' or ')}`)
    }
    return out
  }

  /**
   * Checks every region against the client's view and, when given, the source's final state; see
   * RegionReport for what each number means.
   */
  analyse (opts: { regions: RegionView[], source: IdentityState | null }): CheckReport {
    const problems: string[] = []
    const sourceMismatches = opts.source === null ? [] : this.mismatches(opts.source)
    problems.push(...sourceMismatches.slice(0, 5).map((m) => `source ${m}`))
    const regions = opts.regions.map((r) => this.#region(r, opts.source))
    for (const r of regions) problems.push(...r.problems.map((p) => `${r.region}: ${p}`))
    const states = [...(opts.source === null ? [] : [opts.source]), ...opts.regions.map((r) => r.state)]
    const allEqual = states.every((s) => JSON.stringify(s) === JSON.stringify(states[0]))
    const sum = (f: (r: RegionReport) => number): number => regions.reduce((n, r) => n + f(r), 0)
    const writes = [...this.writes.values()]
    return {
      acknowledged: writes.filter((w) => w.outcome === 'acked').length,
      unacknowledged: writes.filter((w) => w.outcome === 'unknown' || w.outcome === 'pending').length,
      failed: writes.filter((w) => w.outcome === 'failed').length,
      regions,
      lost: sum((r) => r.lost),
      duplicated: sum((r) => r.duplicated),
      orderViolations: sum((r) => r.orderViolations),
      foreign: sum((r) => r.foreign),
      stateMismatches: sum((r) => r.stateMismatches),
      recoveryMs: Math.max(0, ...regions.flatMap((r) => r.recoveryMs)),
      sourceMismatches: sourceMismatches.length,
      allEqual,
      problems: problems.slice(0, 20)
    }
  }

  #region (view: RegionView, source: IdentityState | null): RegionReport {
    const problems: string[] = []
    const note = (p: string): void => { if (problems.length < 10) problems.push(p) }
    /** Applications with effect, in the order the region ran them. */
    const applications = view.replays.filter((r) => r.handled && r.status >= 200 && r.status <= 299)
    const firstAt = new Map<string, number>()
    const times = new Map<string, number>()
    let foreign = 0
    let duplicated = 0
    let orderViolations = 0
    const highest = new Map<string, number>()
    for (const a of applications) {
      const w = a.wid === null ? undefined : this.writes.get(a.wid)
      if (w === undefined || w.outcome === 'failed') {
        foreign++
        note(`applied ${a.method} ${a.url} (event ${a.eventId}), which the client ${w === undefined ? 'never sent' : 'was told failed'}`)
        continue
      }
      const n = (times.get(w.wid) ?? 0) + 1
      times.set(w.wid, n)
      if (n > 1) {
        duplicated++
        note(`applied ${w.wid} (${w.key} #${w.index}, event ${a.eventId}) ${n} times`)
        continue
      }
      firstAt.set(w.wid, a.at)
      const top = highest.get(w.key) ?? -1
      if (w.index < top) {
        orderViolations++
        note(`applied ${w.key} #${w.index} after #${top}`)
      } else {
        highest.set(w.key, w.index)
      }
    }
    let applied = 0
    let lost = 0
    let unacknowledgedApplied = 0
    const lostKeys = new Set<string>()
    for (const w of this.writes.values()) {
      if (w.outcome === 'acked') {
        if (firstAt.has(w.wid)) applied++
        else {
          lost++
          lostKeys.add(w.key)
          note(`never applied acknowledged ${w.wid} (${w.key} #${w.index} ${w.op.kind})`)
        }
      } else if (firstAt.has(w.wid)) {
        unacknowledgedApplied++
      }
    }
    const mismatched = this.mismatches(view.state)
    for (const m of mismatched.slice(0, 5)) note(m)
    // A wrong resource that no missing write explains is a write lost in another way.
    lost += mismatched.filter((m) => !lostKeys.has(m.slice(0, m.indexOf(': has ')))).length
    const recoveryBy: string[] = []
    const recoveryMs = this.faults.filter((f) => f.endedAt !== null).map((f) => {
      const end = f.endedAt as number
      let last = end
      let by = 'nothing was behind'
      for (const w of this.writes.values()) {
        if (w.outcome !== 'acked' || (w.settledAt as number) > end) continue
        const at = firstAt.get(w.wid)
        if (at === undefined) return Number.POSITIVE_INFINITY
        if (at > last) {
          last = at
          by = `${w.key} #${w.index}, acknowledged ${((end - (w.settledAt as number)) / 1000).toFixed(1)} s before the end`
        }
      }
      recoveryBy.push(`${f.name}: ${((last - end) / 1000).toFixed(1)} s, last ${by}`)
      return last - end
    })
    return {
      region: view.name,
      applied,
      lost,
      duplicated,
      orderViolations,
      foreign,
      stateMismatches: mismatched.length,
      unacknowledgedApplied,
      recoveryMs,
      recoveryBy,
      equalToSource: source === null ? null : JSON.stringify(source) === JSON.stringify(view.state),
      problems
    }
  }
}
