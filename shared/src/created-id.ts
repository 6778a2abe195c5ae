/**
 * Finds the identifier a create's JSON response assigned. With the default path `id` it also
 * looks one level into a single wrapper object (`{ "user": { "id": ... } }`, as Keystone answers),
 * and reports the path it found, which the replicator reuses to put the id into the replayed body.
 */
export function findCreatedId (response: unknown, field: string, isDefault: boolean): { id: string, field: string } | null {
  const direct = idAt(response, field)
  if (direct !== null) return { id: direct, field }
  if (!isDefault || response === null || typeof response !== 'object' || Array.isArray(response)) return null
  const keys = Object.keys(response)
  if (keys.length !== 1) return null
  const wrapped = idAt((response as Record<string, unknown>)[keys[0] as string], field)
  return wrapped === null ? null : { id: wrapped, field: `${keys[0] as string}.${field}` }
}

function idAt (obj: unknown, field: string): string | null {
  let cur: unknown = obj
  for (const part of field.split('.')) {
    if (cur === null || typeof cur !== 'object' || Array.isArray(cur)) return null
    cur = (cur as Record<string, unknown>)[part]
  }
  if (typeof cur === 'string' && cur.length > 0) return cur
  if (typeof cur === 'number' && Number.isFinite(cur)) return String(cur)
  return null
}
