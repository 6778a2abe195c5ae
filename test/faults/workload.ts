import { errorCodeOf } from '@regionsync/shared'
import { request } from 'undici'
import { prng } from '../helpers/fixtures.js'
import { requestOf, type Checker, type ClientWrite, type Op } from './checker.js'

const sleep = async (ms: number): Promise<void> => await new Promise((resolve) => setTimeout(resolve, ms))

/** The end-user credentials every client write carries; none may ever reach NATS in clear (I5). */
export interface ClientCredentials {
  /** The source API's write token, sent as `Authorization: Bearer`. */
  bearer: string
  xAuthToken: string
  cookie: string
}

export interface WorkloadOptions {
  /** The source API's base URL, read at every write (it may move). */
  url: () => string
  checker: Checker
  credentials: ClientCredentials
  /** Writers at once; each writes one resource at a time, one write at a time. */
  writers: number
  /** Pause between one writer's writes. */
  pauseMs: number
  /** Writes per user before the writer moves on to a new one. */
  opsPerKey: number
  /** Projects grants may name (they must exist everywhere first); none for a workload without grants. */
  projects: string[]
  seed: number
  /** Prefix of user ids, unique per run. */
  prefix: string
  /** The writers stop by themselves after this long, should nobody stop them. @default 300000 */
  maxMs?: number
}

export type SendResult = { kind: 'answered', status: number, code: string | null } | { kind: 'refused' } | { kind: 'error', message: string }

/** One write over real HTTP, with the client's credentials; never throws. */
export async function send (url: string, credentials: ClientCredentials, method: string, path: string, body?: unknown): Promise<SendResult> {
  try {
    const res = await request(url + path, {
      method: method as 'POST',
      headers: {
        authorization: `Bearer ${credentials.bearer}`,
        'x-auth-token': credentials.xAuthToken,
        cookie: credentials.cookie,
        ...(body === undefined ? {} : { 'content-type': 'application/json' })
      },
      body: body === undefined ? undefined : JSON.stringify(body),
      headersTimeout: 15_000,
      bodyTimeout: 15_000
    })
    const text = await res.body.text()
    let code: string | null = null
    try { code = (JSON.parse(text) as { code?: string }).code ?? null } catch { code = null }
    return { kind: 'answered', status: res.statusCode, code }
  } catch (err) {
    const code = errorCodeOf(err)
    if (code === 'ECONNREFUSED') return { kind: 'refused' }
    return { kind: 'error', message: code ?? String(err instanceof Error ? err.message : err) }
  }
}

/**
 * Sends `op` and settles it in the checker: 2xx is acknowledged; a refused connection, or a 503
 * the plugin gives before the handler runs, certainly did nothing (the caller may retry); anything
 * else leaves the write's fate unknown.
 */
export async function write (url: string, opts: Pick<WorkloadOptions, 'checker' | 'credentials'>, op: Op): Promise<ClientWrite> {
  const w = opts.checker.begin(op)
  const r = requestOf(op, w.wid)
  const res = await send(url, opts.credentials, r.method, r.path, r.body)
  if (res.kind === 'answered' && res.status >= 200 && res.status <= 299) opts.checker.settle(w, 'acked', res.status)
  else if (res.kind === 'refused') opts.checker.settle(w, 'failed', null, 'connection refused')
  else if (res.kind === 'answered' && res.status === 503 && res.code === 'REGIONSYNC_E_UNAVAILABLE') opts.checker.settle(w, 'failed', 503, 'refused before the handler')
  else opts.checker.settle(w, 'unknown', res.kind === 'answered' ? res.status : null, res.kind === 'error' ? res.message : `status ${res.kind === 'answered' ? res.status : ''}`)
  return w
}

/**
 * A steady stream of writes to the source: each writer creates a user, then updates it, grants and
 * revokes roles, deletes and re-creates it, in a random order of its own, then moves to a new
 * user. A write without an answer ends its user's sequence (the client cannot know its state).
 */
export class Workload {
  readonly #o: WorkloadOptions
  #stopped = false
  #deadline = 0
  #done: Promise<void> | null = null
  #users = 0

  constructor (o: WorkloadOptions) {
    this.#o = o
  }

  start (): this {
    this.#deadline = Date.now() + (this.#o.maxMs ?? 300_000)
    const rand = prng(this.#o.seed)
    this.#done = Promise.all(Array.from({ length: this.#o.writers }, async (_, i) => await this.#writer(i, prng(Math.floor(rand() * 2 ** 32))))).then(() => {})
    return this
  }

  /** Stops after each writer's write in flight; resolves when all have. */
  async stop (): Promise<void> {
    this.#stopped = true
    await this.#done
  }

  get #over (): boolean {
    return this.#stopped || Date.now() > this.#deadline
  }

  async #writer (i: number, rand: () => number): Promise<void> {
    // Bounded: every loop ends at stop() or the deadline; retries of refused writes wait between tries.
    while (!this.#over) {
      const id = `${this.#o.prefix}${i}n${this.#users++}`
      await this.#user(id, rand)
    }
  }

  async #user (id: string, rand: () => number): Promise<void> {
    let exists = false
    let grants: Array<{ project: string, role: string }> = []
    for (let n = 0; n < this.#o.opsPerKey && !this.#over; n++) {
      const op = this.#next(id, n, exists, grants, rand)
      let w = await write(this.#o.url(), this.#o, op)
      while (w.outcome === 'failed' && !this.#over) {
        await sleep(100)
        w = await write(this.#o.url(), this.#o, op)
      }
      if (w.outcome !== 'acked') return
      if (op.kind === 'create-user') exists = true
      if (op.kind === 'delete-user') { exists = false; grants = [] }
      if (op.kind === 'grant') grants.push({ project: op.project, role: op.role })
      if (op.kind === 'revoke') grants = grants.filter((g) => g.project !== op.project || g.role !== op.role)
      await sleep(this.#o.pauseMs * (0.5 + rand()))
    }
  }

  #next (id: string, n: number, exists: boolean, grants: Array<{ project: string, role: string }>, rand: () => number): Op {
    if (!exists) return { kind: 'create-user', id, name: `${id}-${n}`, email: `${id}-${n}@example.org`, enabled: true }
    const x = rand()
    const projects = this.#o.projects
    if (projects.length > 0 && x < 0.15) {
      const project = projects[Math.floor(rand() * projects.length)] as string
      const role = ['reader', 'member', 'admin'][Math.floor(rand() * 3)] as string
      if (!grants.some((g) => g.project === project && g.role === role)) return { kind: 'grant', id, project, role }
    }
    if (grants.length > 0 && x < 0.25) {
      const g = grants[Math.floor(rand() * grants.length)] as { project: string, role: string }
      return { kind: 'revoke', id, project: g.project, role: g.role }
    }
    if (x > 0.92) return { kind: 'delete-user', id }
    const op: Op = { kind: 'patch-user', id, name: `${id}-${n}` }
    if (n % 2 === 1) op.email = `${id}-${n}@example.org`
    if (n % 3 === 0) op.enabled = rand() < 0.5
    return op
  }
}
