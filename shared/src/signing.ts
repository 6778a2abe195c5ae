import { createHash, createHmac, timingSafeEqual } from 'node:crypto'
import { BadSignatureError, InvalidOptionError } from './errors.js'

/** NATS header that carries an event's signature. */
export const EVENT_SIGNATURE_HEADER = 'Regionsync-Signature'
/** HTTP header that proves a request is a genuine replay (I5, I6). */
export const REPLAY_SIGNATURE_HEADER = 'x-regionsync-signature'
export const REPLAY_ORIGIN_HEADER = 'x-regionsync-origin'
export const IDEMPOTENCY_KEY_HEADER = 'idempotency-key'

export const MIN_KEY_LENGTH = 32
/** Used only when an operator explicitly runs in dev mode; never accepted otherwise. */
export const DEV_SIGNING_KEY = 'regionsync-dev-mode-insecure-signing-key-0000'
/** How old a replay signature may be before the receiving plugin treats the request as a client's. */
export const DEFAULT_REPLAY_TOLERANCE_MS = 5 * 60_000

export interface Signer {
  /** Signature of an event's payload bytes, as carried in the NATS header. */
  signEvent: (payload: Uint8Array) => string
  /** Throws BadSignatureError unless `signature` is the payload's. */
  verifyEvent: (payload: Uint8Array, signature: string | undefined) => void
  /** Value of `X-Regionsync-Signature` for one replay request. */
  signReplay: (replay: ReplayIdentity, nowMs?: number) => string
  /** True when the header is genuine for this request and not older than the tolerance. */
  verifyReplay: (replay: ReplayIdentity, header: string | undefined, nowMs?: number) => boolean
}

export interface ReplayIdentity {
  eventId: string
  origin: string
  method: string
  body: Uint8Array | null
}

export function parseSigningKey (key: unknown, option = 'signingKey'): string {
  if (typeof key !== 'string' || key.length < MIN_KEY_LENGTH) {
    throw new InvalidOptionError(option, `expects a secret of at least ${MIN_KEY_LENGTH} characters (e.g. the output of \`openssl rand -hex 32\`)`)
  }
  return key
}

export function createSigner (key: string, replayToleranceMs = DEFAULT_REPLAY_TOLERANCE_MS): Signer {
  const secret = Buffer.from(parseSigningKey(key))
  const mac = (label: string, ...parts: Array<string | Uint8Array>): Buffer => {
    const h = createHmac('sha256', secret).update(label)
    for (const p of parts) h.update('\n').update(p)
    return h.digest()
  }
  const replayMac = (r: ReplayIdentity, t: string): Buffer => {
    const bodyHash = createHash('sha256').update(r.body ?? new Uint8Array(0)).digest('base64')
    return mac('regionsync-replay-v1', r.eventId, r.origin, r.method.toUpperCase(), t, bodyHash)
  }
  return {
    signEvent: (payload) => 'v1=' + mac('regionsync-event-v1', payload).toString('base64url'),
    verifyEvent (payload, signature) {
      if (signature === undefined || signature === '') throw new BadSignatureError('event has no signature')
      const expected = 'v1=' + mac('regionsync-event-v1', payload).toString('base64url')
      if (!safeEqual(expected, signature)) throw new BadSignatureError('event signature does not verify')
    },
    signReplay (r, nowMs = Date.now()) {
      const t = String(nowMs)
      return `t=${t},v1=${replayMac(r, t).toString('base64url')}`
    },
    verifyReplay (r, header, nowMs = Date.now()) {
      if (header === undefined) return false
      const m = /^t=(\d{1,16}),v1=([A-Za-z0-9_-]{43})$/.exec(header)
      if (m === null) return false
      const t = m[1] as string
      if (Math.abs(nowMs - Number(t)) > replayToleranceMs) return false
      return safeEqual(replayMac(r, t).toString('base64url'), m[2] as string)
    }
  }
}

function safeEqual (a: string, b: string): boolean {
  const ab = Buffer.from(a)
  const bb = Buffer.from(b)
  return ab.length === bb.length && timingSafeEqual(ab, bb)
}
