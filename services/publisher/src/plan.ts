import type { IdentityMode } from '@regionsync/shared'
import type { CoveredRoute } from './event-builder.js'

/** One route as the plugin will treat it: `app.regionsync.plan()`. */
export interface PlanRow {
  method: string
  url: string
  replicated: boolean
  /** Why: the route's own config, a route rule (`routes[1] (/api/users/login)`), the method, or the defaults. */
  why: string
  /** How the resource key is found: `resource()`, a path prefix (`/api/articles/:slug`), or the path (plus the created id). */
  resourceKey: string | null
  /** A POST that records the created id its response names (when it names one). */
  create: boolean
  /** Where in the response the created id is looked for. */
  createdId: string | false | null
  identity: IdentityMode | null
}

export function planRow (method: string, url: string, route: CoveredRoute | null, why: string): PlanRow {
  if (route === null) return { method, url, replicated: false, why, resourceKey: null, create: false, createdId: null, identity: null }
  const create = method === 'POST' && route.createdId !== false
  return { method, url, replicated: true, why, resourceKey: describeKey(url, route, create), create, createdId: route.createdId, identity: route.identity }
}

function describeKey (url: string, route: CoveredRoute, create: boolean): string {
  if (route.resource !== undefined) return 'resource()'
  if (route.keyDepth !== null) return url.split('/').slice(0, route.keyDepth).join('/')
  return create ? `${url.replace(/\/$/, '')}/<created ${route.createdId as string}> (the path when the response names none)` : 'the path'
}
