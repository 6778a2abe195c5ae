import { InvalidOptionError, validateRegion } from '@regionsync/shared'
import { parseTargetUrl } from '../options.js'

/** Requests a second verify sends at most to any one region's API. */
export const DEFAULT_VERIFY_MAX_RPS = 50
/** Requests in flight at once, over all regions. */
export const DEFAULT_VERIFY_CONCURRENCY = 4
export const DEFAULT_PAGE_SIZE = 500
/**
 * Differences per type held for the recheck and the repairs. The comparison itself holds one page
 * per region; this bounds what a region that lost everything costs (beyond it, differences are
 * counted, not listed).
 */
export const DEFAULT_MAX_DIFFERENCES = 10_000
/** How long a recheck waits for a region to apply what the stream held when the recheck began. */
export const DEFAULT_SETTLE_TIMEOUT_MS = 60_000

/** How a collection pages. */
export type Paging =
  /** `?offset=N&limit=L`; the last page is the first one shorter than L. */
  | { kind: 'offset', offsetParam: string, limitParam: string }
  /**
   * `?limit=L&<param>=<cursor>`; the cursor is the last item's id (`next: "$lastId"`, Keystone's
   * `marker`) or a field of the page (`next: "next_cursor"`); the last page has no cursor or no items.
   */
  | { kind: 'cursor', param: string, limitParam: string, next: string }
  /** The next page's URL from a `Link: <url>; rel="next"` header, or from a field of the page (`next: "links.next"`). */
  | { kind: 'link', limitParam: string, next: string | null }

export interface RepairConfig {
  /** PUT the source's representation here (`{id}` is the resource's id); null when the type cannot be PUT. */
  put: { path: string, /** Field the representation is wrapped in (`{"user": {...}}`); '' for none. */ wrap: string, /** Fields not sent. */ omit: string[] } | null
  /** DELETE here a resource the source does not have; null when the type cannot be deleted. */
  delete: { path: string } | null
}

export interface TypeConfig {
  name: string
  /** Path of the collection, with any fixed query. */
  collection: string
  /** Dotted path of the list in a page; '' when the page is the list. */
  items: string
  /** Dotted path of the id in an item. */
  id: string
  /** How ids are ordered in the collection (the merge needs each region in the same order). */
  idOrder: 'string' | 'number'
  paging: Paging
  /** One resource, to recheck it: path with `{id}`, and the field the resource is wrapped in ('' for none). */
  item: { path: string, field: string }
  /** Dotted paths left out of the comparison: timestamps, per-region ids. */
  ignore: string[]
  /** The resource key the plugin uses for this resource's events, with `{id}`; repairs are keyed on it. */
  resourceKey: string
  /** null: differences are reported, never repaired. */
  repair: RepairConfig | null
}

export interface RegionEndpoint {
  name: string
  url: URL
  /** Bearer token for reads (and nothing else); from the environment variable the config names. */
  token: string | undefined
}

export interface VerifyConfig {
  source: string
  /** Source first, then the targets in the config's order. */
  regions: RegionEndpoint[]
  maxRps: number
  concurrency: number
  pageSize: number
  maxDifferences: number
  settleTimeoutMs: number
  types: TypeConfig[]
}

type Raw = Record<string, unknown>

const NAME_RE = /^[a-z][a-z0-9_-]{0,63}$/
const FIELD_RE = /^[A-Za-z0-9_$-]+(\.[A-Za-z0-9_$-]+)*$/
const PARAM_RE = /^[A-Za-z0-9_.[\]-]+$/

/**
 * Validates a verify config (parsed JSON) and fills its defaults. Every mistake is an
 * InvalidOptionError naming the field by its path in the file, e.g. `types[1].paging.kind`.
 */
export function parseVerifyConfig (raw: unknown, env: Record<string, string | undefined> = {}): VerifyConfig {
  const c = object(raw, 'config')
  known(c, 'config', ['source', 'regions', 'maxRps', 'concurrency', 'pageSize', 'maxDifferences', 'settleTimeoutMs', 'types'])
  const source = validateRegion(c.source, 'source')
  const rawRegions = object(c.regions, 'regions')
  const regions: RegionEndpoint[] = Object.entries(rawRegions).map(([name, v]) => {
    const at = `regions.${name}`
    validateRegion(name, at)
    const r = object(v, at)
    known(r, at, ['url', 'urlEnv', 'tokenEnv'])
    // urlEnv, when set in the environment, wins over url: one file serves a laptop and a cluster.
    const urlEnv = r.urlEnv === undefined ? undefined : string(r.urlEnv, `${at}.urlEnv`)
    const fromEnv = urlEnv === undefined ? undefined : env[urlEnv]
    const url = fromEnv !== undefined && fromEnv !== '' ? parseTargetUrl(fromEnv, urlEnv as string) : parseTargetUrl(r.url, `${at}.url`)
    const tokenEnv = r.tokenEnv === undefined ? undefined : string(r.tokenEnv, `${at}.tokenEnv`)
    const token = tokenEnv === undefined ? undefined : env[tokenEnv]
    if (tokenEnv !== undefined && (token === undefined || token === '')) throw new InvalidOptionError(`${at}.tokenEnv`, `names ${tokenEnv}, which is not set`)
    return { name, url, token }
  })
  const sourceRegion = regions.find((r) => r.name === source)
  if (sourceRegion === undefined) throw new InvalidOptionError('source', `names region ${source}, which regions does not list`)
  if (regions.length < 2) throw new InvalidOptionError('regions', 'expects the source and at least one other region')
  const types = array(c.types, 'types').map((t, i) => parseType(t, `types[${i}]`))
  if (types.length === 0) throw new InvalidOptionError('types', 'expects at least one resource type')
  const seen = new Set<string>()
  for (const t of types) {
    if (seen.has(t.name)) throw new InvalidOptionError('types', `lists ${t.name} twice`)
    seen.add(t.name)
  }
  return {
    source,
    regions: [sourceRegion, ...regions.filter((r) => r !== sourceRegion)],
    maxRps: int(c.maxRps ?? DEFAULT_VERIFY_MAX_RPS, 'maxRps', 1, 100_000),
    concurrency: int(c.concurrency ?? DEFAULT_VERIFY_CONCURRENCY, 'concurrency', 1, 256),
    pageSize: int(c.pageSize ?? DEFAULT_PAGE_SIZE, 'pageSize', 1, 10_000),
    maxDifferences: int(c.maxDifferences ?? DEFAULT_MAX_DIFFERENCES, 'maxDifferences', 1, 10_000_000),
    settleTimeoutMs: int(c.settleTimeoutMs ?? DEFAULT_SETTLE_TIMEOUT_MS, 'settleTimeoutMs', 0, 3_600_000),
    types
  }
}

function parseType (raw: unknown, at: string): TypeConfig {
  const t = object(raw, at)
  known(t, at, ['name', 'collection', 'items', 'id', 'idOrder', 'paging', 'item', 'ignore', 'resourceKey', 'repair'])
  const name = string(t.name, `${at}.name`)
  if (!NAME_RE.test(name)) throw new InvalidOptionError(`${at}.name`, 'expects 1-64 lower-case letters, digits, "-" or "_", starting with a letter (it becomes a metric label)')
  const item = object(t.item, `${at}.item`)
  known(item, `${at}.item`, ['path', 'field'])
  const itemPath = template(item.path, `${at}.item.path`)
  const idOrder = t.idOrder ?? 'string'
  if (idOrder !== 'string' && idOrder !== 'number') throw new InvalidOptionError(`${at}.idOrder`, 'expects "string" or "number"')
  return {
    name,
    collection: path(t.collection, `${at}.collection`),
    items: field(t.items ?? '', `${at}.items`, true),
    id: field(t.id ?? 'id', `${at}.id`),
    idOrder,
    paging: parsePaging(t.paging, `${at}.paging`),
    item: { path: itemPath, field: field(item.field ?? '', `${at}.item.field`, true) },
    ignore: array(t.ignore ?? [], `${at}.ignore`).map((f, i) => field(f, `${at}.ignore[${i}]`)),
    resourceKey: t.resourceKey === undefined ? itemPath.split('?')[0] as string : template(t.resourceKey, `${at}.resourceKey`, false),
    repair: t.repair === undefined || t.repair === false ? null : parseRepair(t.repair, `${at}.repair`)
  }
}

function parsePaging (raw: unknown, at: string): Paging {
  const p = object(raw, at)
  const limitParam = param(p.limitParam ?? 'limit', `${at}.limitParam`)
  switch (p.kind) {
    case 'offset':
      known(p, at, ['kind', 'offsetParam', 'limitParam'])
      return { kind: 'offset', offsetParam: param(p.offsetParam ?? 'offset', `${at}.offsetParam`), limitParam }
    case 'cursor': {
      known(p, at, ['kind', 'param', 'limitParam', 'next'])
      const next = p.next ?? '$lastId'
      return { kind: 'cursor', param: param(p.param, `${at}.param`), limitParam, next: next === '$lastId' ? next : field(next, `${at}.next`) }
    }
    case 'link':
      known(p, at, ['kind', 'limitParam', 'next'])
      return { kind: 'link', limitParam, next: p.next === undefined ? null : field(p.next, `${at}.next`) }
    default:
      throw new InvalidOptionError(`${at}.kind`, 'expects "offset", "cursor" or "link"')
  }
}

function parseRepair (raw: unknown, at: string): RepairConfig {
  const r = object(raw, at)
  known(r, at, ['put', 'delete'])
  let put: RepairConfig['put'] = null
  if (r.put !== undefined) {
    const p = object(r.put, `${at}.put`)
    known(p, `${at}.put`, ['path', 'wrap', 'omit'])
    put = {
      path: template(p.path, `${at}.put.path`, false),
      wrap: field(p.wrap ?? '', `${at}.put.wrap`, true),
      omit: array(p.omit ?? [], `${at}.put.omit`).map((f, i) => field(f, `${at}.put.omit[${i}]`))
    }
  }
  let del: RepairConfig['delete'] = null
  if (r.delete !== undefined) {
    const d = object(r.delete, `${at}.delete`)
    known(d, `${at}.delete`, ['path'])
    del = { path: template(d.path, `${at}.delete.path`, false) }
  }
  if (put === null && del === null) throw new InvalidOptionError(at, 'expects put, delete or both (or leave repair out)')
  return { put, delete: del }
}

function object (v: unknown, at: string): Raw {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new InvalidOptionError(at, 'expects an object')
  return v as Raw
}

function array (v: unknown, at: string): unknown[] {
  if (!Array.isArray(v)) throw new InvalidOptionError(at, 'expects a list')
  return v
}

function string (v: unknown, at: string): string {
  if (typeof v !== 'string' || v === '') throw new InvalidOptionError(at, 'expects a non-empty string')
  return v
}

function known (o: Raw, at: string, keys: string[]): void {
  for (const k of Object.keys(o)) {
    if (!keys.includes(k)) throw new InvalidOptionError(`${at}.${k}`, `is not a known field (expected one of ${keys.join(', ')})`)
  }
}

function int (v: unknown, at: string, min: number, max: number): number {
  if (!Number.isInteger(v) || (v as number) < min || (v as number) > max) throw new InvalidOptionError(at, `expects a whole number from ${min} to ${max}`)
  return v as number
}

function field (v: unknown, at: string, allowEmpty = false): string {
  if (allowEmpty && v === '') return ''
  if (typeof v !== 'string' || !FIELD_RE.test(v)) throw new InvalidOptionError(at, 'expects a field name or a dotted path such as "links.next"')
  return v
}

function param (v: unknown, at: string): string {
  if (typeof v !== 'string' || !PARAM_RE.test(v)) throw new InvalidOptionError(at, 'expects a query parameter name')
  return v
}

function path (v: unknown, at: string): string {
  if (typeof v !== 'string' || !v.startsWith('/') || v.startsWith('//') || v.includes('#')) throw new InvalidOptionError(at, 'expects a path starting with one "/" (e.g. "/v3/users")')
  return v
}

function template (v: unknown, at: string, query = true): string {
  const p = path(v, at)
  if (!query && p.includes('?')) throw new InvalidOptionError(at, 'expects a path without a query')
  if (!p.includes('{id}')) throw new InvalidOptionError(at, 'expects a path with {id} where the resource\'s id goes (e.g. "/v3/users/{id}")')
  return p
}

/** A path template with the id put in, escaped as one path segment. */
export function fillTemplate (template: string, id: string): string {
  return template.replaceAll('{id}', encodeURIComponent(id))
}
