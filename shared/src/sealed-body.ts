import { MalformedEventError } from './errors.js'
import { eventBody, sealedBodyAad, type RegionsyncEvent } from './event.js'
import { openBytes } from './sealed-headers.js'

/**
 * The request body of an event as bytes, opening a sealed one (publisher option `sealBodies`) with
 * the encryption key, so the broker and dead letters never hold it in clear. Throws
 * MalformedEventError when the body is sealed and `key` is missing or not the one it was sealed
 * with: a replicator dead-letters such an event as undecryptable.
 */
export function openEventBody (event: RegionsyncEvent, key: Buffer | undefined): Buffer | null {
  if (event.bodyEncoding !== 'sealed' || event.body === null) return eventBody(event)
  if (key === undefined) throw new MalformedEventError('the body is sealed and no encryption key was given')
  try {
    return openBytes(key, sealedBodyAad(event.id), event.body, 'sealed body')
  } catch (err) {
    throw new MalformedEventError('the sealed body does not open with this encryption key', { cause: err })
  }
}
