import { createHash } from 'node:crypto'

/** The value at a dotted path ('' is the value itself); undefined when any step is missing. */
export function pick (value: unknown, path: string): unknown {
  if (path === '') return value
  let v = value
  for (const step of path.split('.')) {
    if (v === null || typeof v !== 'object') return undefined
    v = (v as Record<string, unknown>)[step]
  }
  return v
}

/** A copy of `value` without the fields at the given dotted paths (paths into lists apply to each element). */
export function omit (value: unknown, paths: readonly string[]): unknown {
  if (paths.length === 0) return value
  return without(value, paths.map((p) => p.split('.')))
}

function without (value: unknown, paths: string[][]): unknown {
  if (Array.isArray(value)) return value.map((v) => without(v, paths))
  if (value === null || typeof value !== 'object') return value
  const out: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(value)) {
    if (paths.some((p) => p.length === 1 && p[0] === k)) continue
    const deeper = paths.filter((p) => p.length > 1 && p[0] === k).map((p) => p.slice(1))
    out[k] = deeper.length === 0 ? v : without(v, deeper)
  }
  return out
}

/**
 * The representation as compared: ignored fields left out, object keys sorted, so two regions that
 * serialise the same resource in a different key order compare equal. Arrays keep their order: an
 * API that returns a set in a different order per region has regions that differ as its clients see them.
 */
export function canonicalJson (value: unknown, ignore: readonly string[]): string {
  return JSON.stringify(sorted(omit(value, ignore)))
}

function sorted (value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sorted)
  if (value === null || typeof value !== 'object') return value
  const out: Record<string, unknown> = {}
  for (const k of Object.keys(value).sort()) out[k] = sorted((value as Record<string, unknown>)[k])
  return out
}

/** 16 bytes of SHA-256 over the canonical JSON: collisions are out of reach at any resource count, and it is what a difference is kept as. */
export function hashOf (canonical: string): string {
  return createHash('sha256').update(canonical).digest('base64url').slice(0, 22)
}

/**
 * The first field, in sorted key order, where two normalised representations differ, as a dotted
 * path (list positions as numbers); '' when the values differ at the top (different types).
 * Null when they are equal.
 */
export function firstDifference (a: unknown, b: unknown, at = ''): string | null {
  if (a === b) return null
  const join = (k: string): string => at === '' ? k : `${at}.${k}`
  if (Array.isArray(a) && Array.isArray(b)) {
    for (let i = 0; i < Math.max(a.length, b.length); i++) {
      if (i >= a.length || i >= b.length) return join(String(i))
      const d = firstDifference(a[i], b[i], join(String(i)))
      if (d !== null) return d
    }
    return null
  }
  if (a !== null && b !== null && typeof a === 'object' && typeof b === 'object' && !Array.isArray(a) && !Array.isArray(b)) {
    const ao = a as Record<string, unknown>
    const bo = b as Record<string, unknown>
    for (const k of [...new Set([...Object.keys(ao), ...Object.keys(bo)])].sort()) {
      if (!(k in ao) || !(k in bo)) return join(k)
      const d = firstDifference(ao[k], bo[k], join(k))
      if (d !== null) return d
    }
    return null
  }
  return at
}
