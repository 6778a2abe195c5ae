import { VerifyReadError } from '@regionsync/shared'
import { Agent, request, type Dispatcher } from 'undici'
import { Semaphore } from '../semaphore.js'
import { TokenBucket } from '../token-bucket.js'
import type { Paging, RegionEndpoint, TypeConfig } from './config.js'
import { pick } from './normalise.js'

export const DEFAULT_READ_TIMEOUT_MS = 30_000
/** Bytes of a failed read's body kept in its error. */
const EXCERPT_BYTES = 200

/** One resource as a region's collection lists it. */
export interface ListedResource {
  id: string
  value: unknown
}

/** What the readers of every region share: the bound on requests in flight over all regions. */
export interface ReadBudget {
  semaphore: Semaphore
}

/**
 * Reads one region's API: every request waits for the region's token bucket (the configured rate
 * is a promise to the API's owners) and for a slot under the shared concurrency bound.
 */
export class RegionReader {
  readonly region: RegionEndpoint
  readonly #bucket: TokenBucket
  readonly #budget: ReadBudget
  readonly #dispatcher: Dispatcher
  readonly #timeoutMs: number
  /** Requests sent, for the report and the bench. */
  requests = 0

  constructor (region: RegionEndpoint, maxRps: number, budget: ReadBudget, timeoutMs = DEFAULT_READ_TIMEOUT_MS) {
    this.region = region
    this.#bucket = new TokenBucket(maxRps)
    this.#budget = budget
    this.#timeoutMs = timeoutMs
    this.#dispatcher = new Agent({ connections: 4, headersTimeout: timeoutMs, bodyTimeout: timeoutMs })
  }

  /** GET of a path (with query) on the region's origin; a 404 is null. */
  async get (pathAndQuery: string): Promise<{ body: unknown, link: string | null } | null> {
    const url = new URL(pathAndQuery, this.region.url)
    if (url.origin !== this.region.url.origin) throw new VerifyReadError(this.region.name, `refusing to follow ${url.origin}: a next page must stay on the region's origin`)
    await this.#bucket.take()
    const release = await this.#budget.semaphore.acquire()
    try {
      this.requests++
      let res
      try {
        res = await request(url, {
          method: 'GET',
          dispatcher: this.#dispatcher,
          headers: { accept: 'application/json', ...(this.region.token !== undefined ? { authorization: `Bearer ${this.region.token}` } : {}) },
          signal: AbortSignal.timeout(this.#timeoutMs)
        })
      } catch (err) {
        throw new VerifyReadError(this.region.name, `GET ${url.pathname}${url.search} failed: ${(err as Error).message}`, { cause: err })
      }
      const text = await res.body.text()
      if (res.statusCode === 404) return null
      if (res.statusCode < 200 || res.statusCode > 299) {
        throw new VerifyReadError(this.region.name, `GET ${url.pathname}${url.search} answered ${res.statusCode}: ${text.slice(0, EXCERPT_BYTES)}`)
      }
      let body: unknown
      try {
        body = JSON.parse(text)
      } catch (err) {
        throw new VerifyReadError(this.region.name, `GET ${url.pathname}${url.search} did not answer JSON`, { cause: err })
      }
      const link = res.headers.link
      return { body, link: typeof link === 'string' ? nextLink(link) : null }
    } finally {
      release()
    }
  }

  /** One resource by its item path, unwrapped; null when the region does not have it. */
  async getItem (type: TypeConfig, itemPath: string): Promise<unknown> {
    const res = await this.get(itemPath)
    if (res === null) return null
    const value = pick(res.body, type.item.field)
    if (value === undefined || value === null) throw new VerifyReadError(this.region.name, `GET ${itemPath} has no ${type.item.field}`)
    return value
  }

  /**
   * Every resource of a type, in the collection's order, which must be ascending by id (checked: a
   * merge of regions listed in different orders would report differences that are not there). The
   * next page is requested before this page's resources are handed out, so reading overlaps the
   * comparison; at most two pages of the region are held.
   */
  async * list (type: TypeConfig, pageSize: number): AsyncGenerator<ListedResource> {
    let next: Promise<Page> | null = this.#prefetch(type, firstPageUrl(type.collection, type.paging, pageSize))
    let last: ListedResource | null = null
    let offset = 0
    while (next !== null) {
      const page: Page = await next
      offset += page.items.length
      next = null
      const following = nextPageUrl(type, page, pageSize, offset)
      if (following !== null) next = this.#prefetch(type, following)
      const pageStart = last
      for (const item of page.items) {
        if (last !== null && compareIds(type, last.id, item.id) >= 0) {
          // Offsets shift under a live collection: a create before the offset repeats the last
          // item(s) at the top of the next page. Those are skipped; a delete's shift makes an item
          // look missing, which the recheck reads by itself. Inside a page, order must hold.
          if (type.paging.kind === 'offset' && last === pageStart) continue
          throw new VerifyReadError(this.region.name, `${type.name}: ${type.collection} does not list ids in ascending ${type.idOrder} order (${JSON.stringify(last.id)} before ${JSON.stringify(item.id)}); verify compares sorted lists (set idOrder, or sort the collection by id)`)
        }
        last = item
        yield item
      }
    }
  }

  /**
   * A page requested ahead. Its failure surfaces when the list reaches it; until then (or if the
   * list is abandoned first) it must not count as an unhandled rejection, which ends the process.
   */
  #prefetch (type: TypeConfig, pathAndQuery: string): Promise<Page> {
    const p = this.#page(type, pathAndQuery)
    p.catch(() => {})
    return p
  }

  async #page (type: TypeConfig, pathAndQuery: string): Promise<Page> {
    const res = await this.get(pathAndQuery)
    if (res === null) throw new VerifyReadError(this.region.name, `${type.name}: GET ${pathAndQuery} answered 404`)
    const list = pick(res.body, type.items)
    if (!Array.isArray(list)) throw new VerifyReadError(this.region.name, `${type.name}: GET ${pathAndQuery} has no list at ${type.items === '' ? 'the top' : type.items}`)
    const items = list.map((value): ListedResource => {
      const id = pick(value, type.id)
      if (typeof id !== 'string' && typeof id !== 'number') throw new VerifyReadError(this.region.name, `${type.name}: an item of ${pathAndQuery} has no ${type.id}`)
      return { id: String(id), value }
    })
    return { items, body: res.body, link: res.link }
  }

  async close (): Promise<void> {
    await this.#dispatcher.close()
  }
}

interface Page {
  items: ListedResource[]
  body: unknown
  link: string | null
}

/** Id order as the type declares it: code-unit order for strings, numeric for numbers. */
export function compareIds (type: Pick<TypeConfig, 'idOrder'>, a: string, b: string): number {
  if (type.idOrder === 'number') return Number(a) - Number(b)
  return a < b ? -1 : a > b ? 1 : 0
}

function withParams (pathAndQuery: string, params: Record<string, string>): string {
  const q = pathAndQuery.indexOf('?')
  const search = new URLSearchParams(q === -1 ? '' : pathAndQuery.slice(q + 1))
  for (const [k, v] of Object.entries(params)) search.set(k, v)
  return `${q === -1 ? pathAndQuery : pathAndQuery.slice(0, q)}?${search.toString()}`
}

function firstPageUrl (collection: string, paging: Paging, pageSize: number): string {
  if (paging.kind === 'offset') return withParams(collection, { [paging.offsetParam]: '0', [paging.limitParam]: String(pageSize) })
  return withParams(collection, { [paging.limitParam]: String(pageSize) })
}

/** The next page's path and query, or null when `page` was the last. */
export function nextPageUrl (type: TypeConfig, page: Page, pageSize: number, offset: number): string | null {
  const p = type.paging
  if (page.items.length === 0) return null
  switch (p.kind) {
    case 'offset':
      return page.items.length < pageSize ? null : withParams(type.collection, { [p.offsetParam]: String(offset), [p.limitParam]: String(pageSize) })
    case 'cursor': {
      const cursor = p.next === '$lastId' ? (page.items.length < pageSize ? undefined : page.items[page.items.length - 1]?.id) : pick(page.body, p.next)
      if (cursor === undefined || cursor === null || cursor === '') return null
      return withParams(type.collection, { [p.limitParam]: String(pageSize), [p.param]: String(cursor) })
    }
    case 'link': {
      const link = p.next === null ? page.link : pick(page.body, p.next)
      return typeof link === 'string' && link !== '' ? link : null
    }
  }
}

/** The `rel="next"` target of a Link header (RFC 8288), or null. */
export function nextLink (header: string): string | null {
  for (const part of header.split(/,(?=\s*<)/)) {
    const m = /^\s*<([^>]*)>(.*)$/.exec(part)
    if (m === null) continue
    if (/;\s*rel="?([^";]*\s)?next(\s[^";]*)?"?\s*(;|$)/i.test(m[2] as string)) return m[1] as string
  }
  return null
}
