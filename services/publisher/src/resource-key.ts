import type { FastifyRequest } from 'fastify'
import type { ResourceKeyFn } from './options.js'

/**
 * How the default resource key is cut from a route: the request path up to and including the
 * route's first parameter, so `/v3/users/:id/roles/:rid` keys on `/v3/users/<id>` and a user's
 * sub-resources stay in order with the user. Null for a route with no parameter: the key is the
 * path, extended by the created id on a create.
 */
export function keyDepthOf (routeUrl: string): number | null {
  if (routeUrl.includes('*')) return null
  const segments = routeUrl.split('/')
  const i = segments.findIndex((s) => s.includes(':'))
  return i === -1 ? null : i + 1
}

/** Positions of a route's parameters in `path.split('/')`: where identifiers sit, for translation. */
export function paramSegmentsOf (routeUrl: string): number[] {
  if (routeUrl.includes('*')) return []
  return routeUrl.split('/').flatMap((s, i) => s.startsWith(':') ? [i] : [])
}

export function resourceKey (
  request: FastifyRequest,
  path: string,
  keyDepth: number | null,
  custom: ResourceKeyFn | undefined,
  body: () => unknown,
  createdId: string | null
): string {
  if (custom !== undefined) {
    const ref = custom(request, body(), createdId)
    return `${String(ref.type)}/${String(ref.id)}`
  }
  if (keyDepth !== null) {
    const segments = path.split('/')
    if (segments.length >= keyDepth) return segments.slice(0, keyDepth).join('/')
  }
  const base = path.endsWith('/') ? path.slice(0, -1) : path
  return createdId === null ? path : `${base}/${createdId}`
}
