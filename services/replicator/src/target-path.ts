import { BadPathError } from '@regionsync/shared'

// eslint-disable-next-line no-control-regex
const UNSAFE_CHARS_RE = /[\u0000-\u0020\u007f\\#]/

/**
 * Joins an event's path and query onto the target's base path, refusing anything that could make
 * the request leave the target's origin or climb out of its base path: scheme-relative `//host`,
 * absolute URLs, `.` or `..` segments (also percent-encoded), backslashes, control characters.
 */
export function targetPath (basePath: string, path: string, query: string): string {
  if (!path.startsWith('/') || path.startsWith('//')) throw new BadPathError(`path ${JSON.stringify(path.slice(0, 200))} must start with a single "/"`)
  if (UNSAFE_CHARS_RE.test(path) || UNSAFE_CHARS_RE.test(query)) throw new BadPathError('path or query holds a control character, space, "\\" or "#"')
  for (const segment of path.split('/')) {
    let decoded: string
    try {
      decoded = decodeURIComponent(segment)
    } catch {
      throw new BadPathError('path holds a malformed percent-encoding')
    }
    if (decoded === '.' || decoded === '..' || decoded.includes('/') || decoded.includes('\\')) {
      throw new BadPathError(`path segment ${JSON.stringify(segment)} would leave the target's base path`)
    }
  }
  const full = basePath + path + (query === '' ? '' : `?${query}`)
  const resolved = new URL(full, 'http://target.invalid')
  if (resolved.host !== 'target.invalid' || !resolved.pathname.startsWith(basePath === '' ? '/' : basePath + '/')) {
    throw new BadPathError('path resolves outside the target')
  }
  return full
}
