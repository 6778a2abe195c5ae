import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto'
import { InvalidOptionError, MalformedEventError } from './errors.js'

const IV_BYTES = 12
const TAG_BYTES = 16

/** A 32-byte key, given as 64 hex characters or as base64. */
export function parseEncryptionKey (value: unknown, option = 'encryptionKey'): Buffer {
  const expected = 'expects 32 random bytes as 64 hex characters or base64 (e.g. the output of `openssl rand -hex 32`)'
  if (typeof value !== 'string') throw new InvalidOptionError(option, expected)
  const key = /^[0-9a-fA-F]{64}$/.test(value) ? Buffer.from(value, 'hex') : Buffer.from(value, 'base64')
  if (key.length !== 32) throw new InvalidOptionError(option, expected)
  return key
}

/**
 * Encrypts the headers an operator chose to forward (I5) with AES-256-GCM, bound to the event id
 * so a sealed blob cannot be moved to another event. The broker, a dead letter or a log only ever
 * hold the sealed form: base64url of iv, ciphertext and tag.
 */
export function sealHeaders (key: Buffer, eventId: string, headers: Record<string, string>): string {
  return sealBytes(key, eventId, Buffer.from(JSON.stringify(headers), 'utf8'))
}

/** AES-256-GCM of `plain`, authenticated with `aad`: base64url of iv, ciphertext and tag. */
export function sealBytes (key: Buffer, aad: string, plain: Buffer): string {
  const iv = randomBytes(IV_BYTES)
  const cipher = createCipheriv('aes-256-gcm', key, iv)
  cipher.setAAD(Buffer.from(aad))
  const body = Buffer.concat([cipher.update(plain), cipher.final()])
  return Buffer.concat([iv, body, cipher.getAuthTag()]).toString('base64url')
}

/** Opens what sealBytes made; throws (from node:crypto) when the key, the aad or the bytes are not the ones sealed. */
export function openBytes (key: Buffer, aad: string, sealed: string, what: string): Buffer {
  const raw = Buffer.from(sealed, 'base64url')
  if (raw.length < IV_BYTES + TAG_BYTES) throw new MalformedEventError(`${what} is too short`)
  const decipher = createDecipheriv('aes-256-gcm', key, raw.subarray(0, IV_BYTES))
  decipher.setAAD(Buffer.from(aad))
  decipher.setAuthTag(raw.subarray(raw.length - TAG_BYTES))
  return Buffer.concat([decipher.update(raw.subarray(IV_BYTES, raw.length - TAG_BYTES)), decipher.final()])
}

export function openHeaders (key: Buffer, eventId: string, sealed: string): Record<string, string> {
  try {
    const plain = openBytes(key, eventId, sealed, 'sealed headers')
    const headers = JSON.parse(plain.toString('utf8')) as unknown
    if (headers === null || typeof headers !== 'object' || !Object.values(headers).every((v) => typeof v === 'string')) {
      throw new Error('not an object of strings')
    }
    return headers as Record<string, string>
  } catch (err) {
    throw new MalformedEventError('sealed headers do not open with this encryption key', { cause: err })
  }
}
