import { describe, expect, it } from 'vitest'
import { ErrorCode, isRegionsyncError } from '@regionsync/shared'
import { targetPath } from '../../services/replicator/src/target-path.js'

const refused = (basePath: string, path: string, query = ''): boolean => {
  try {
    targetPath(basePath, path, query)
    return false
  } catch (err) {
    return isRegionsyncError(err, ErrorCode.BadPath)
  }
}

describe('targetPath: an event path never leaves the target', () => {
  it('joins path and query onto the base path', () => {
    expect(targetPath('', '/v3/users/u1', '')).toBe('/v3/users/u1')
    expect(targetPath('/api', '/v3/users', 'a=1&b=2')).toBe('/api/v3/users?a=1&b=2')
    expect(targetPath('/api', '/v3/users/a%20b', '')).toBe('/api/v3/users/a%20b')
  })

  it.each([
    ['scheme-relative', '//evil.example/x'],
    ['absolute URL', 'http://evil.example/x'],
    ['no leading slash', 'v3/users'],
    ['dot-dot segment', '/v3/../admin'],
    ['dot segment', '/v3/./users'],
    ['encoded dot-dot', '/v3/%2e%2e/admin'],
    ['encoded slash', '/v3/a%2fb'],
    ['backslash', '/v3\\users'],
    ['encoded backslash', '/v3/a%5cb'],
    ['control character', '/v3/\u0000'],
    ['space', '/v3/a b'],
    ['fragment', '/v3/users#x'],
    ['malformed percent-encoding', '/v3/%zz']
  ])('refuses a %s path as bad-path', (_name, path) => {
    expect(refused('/api', path)).toBe(true)
  })

  it('refuses a query that holds a control character or fragment', () => {
    expect(refused('', '/v3/users', 'a=\n')).toBe(true)
    expect(refused('', '/v3/users', 'a=1#b')).toBe(true)
  })
})
