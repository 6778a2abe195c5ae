import { createHash, createHmac, createSecretKey, timingSafeEqual } from 'node:crypto'
import { BadSignatureError, InvalidOptionError } from './errors.js'

/** NATS header that carries an event's signature. */
export const EVENT_SIGNATURE_HEADER = 'Regionsync-Signature'
/** HTTP header that proves a request is a genuine replay (I5, I6). */
export const REPLAY_SIGNATURE_HEADER = 'x-regionsync-signature'
export const REPLAY_ORIGIN_HEADER = 'x-regionsync-origin'
export const IDEMPOTENCY_KEY_HEADER = 'idempotency-key'
/** HTTP header with the event's stream sequence: the target's plugin answers an older one for a resource as superseded. */
export const REPLAY_SEQ_HEADER = 'x-regionsync-seq'
/** HTTP header with the event's resource key, which the sequence fence is kept per. */
export const REPLAY_RESOURCE_HEADER = 'x-regionsync-resource'

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
  /** The event's stream sequence (`X-Regionsync-Seq`); null for a replay that has none (a repair). */
  seq: number | null
  /** The event's resource key (`X-Regionsync-Resource`). */
  resource: string
}

export function parseSigningKey (key: unknown, option = 'signingKey'): string {
  if (typeof key !== 'string' || key.length < MIN_KEY_LENGTH) {
    throw new InvalidOptionError(option, `expects a secret of at least ${MIN_KEY_LENGTH} characters (e.g. the output of \`openssl rand -hex 32\`)`)
  }
  return key
}

const EVENT_MAC_PREFIX = Buffer.from('regionsync-event-v1\n')
const EMPTY = new Uint8Array(0)

export function createSigner (key: string, replayToleranceMs = DEFAULT_REPLAY_TOLERANCE_MS): Signer {
  // A key object is imported once, not on every signature; and each MAC is fed in as few pieces
  // as its input allows (the bytes, and so the signatures, are what they always were: the label,
  // then each part after a newline). Both are on the plugin's and the replicator's per-event path.
  const secret = createSecretKey(Buffer.from(parseSigningKey(key)))
  const eventMac = (payload: Uint8Array): string =>
    createHmac('sha256', secret).update(EVENT_MAC_PREFIX).update(payload).digest('base64url')
  const replayMac = (r: ReplayIdentity, t: string): string => {
    const bodyHash = createHash('sha256').update(r.body ?? EMPTY).digest('base64')
    // The sequence and resource are signed too: they decide what the target's fence lets through.
    return createHmac('sha256', secret)
      .update(`regionsync-replay-v2\n${r.eventId}\n${r.origin}\n${r.method.toUpperCase()}\n${t}\n${r.seq ?? ''}\n${r.resource}\n${bodyHash}`)
      .digest('base64url')
  }
  return {
    signEvent: (payload) => 'v1=' + eventMac(payload),
    verifyEvent (payload, signature) {
      if (signature === undefined || signature === '') throw new BadSignatureError('event has no signature')
      const expected = 'v1=' + eventMac(payload)
      if (!safeEqual(expected, signature)) throw new BadSignatureError('event signature does not verify')
    },
    signReplay (r, nowMs = Date.now()) {
      const t = String(nowMs)
      return `t=${t},v1=${replayMac(r, t)}`
    },
    verifyReplay (r, header, nowMs = Date.now()) {
      if (header === undefined) return false
      const m = /^t=(\d{1,16}),v1=([A-Za-z0-9_-]{43})$/.exec(header)
      if (m === null) return false
      const t = m[1] as string
      if (Math.abs(nowMs - Number(t)) > replayToleranceMs) return false
      return safeEqual(replayMac(r, t), m[2] as string)
    }
  }
}

function safeEqual (a: string, b: string): boolean {
  const ab = Buffer.from(a)
  const bb = Buffer.from(b)
  return ab.length === bb.length && timingSafeEqual(ab, bb)
}
