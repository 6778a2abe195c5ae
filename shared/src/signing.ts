import { createHash, createHmac, createSecretKey, timingSafeEqual, type KeyObject } from 'node:crypto'
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
/** Standard Webhooks headers (https://www.standardwebhooks.com), for targets without our plugin. */
export const WEBHOOK_ID_HEADER = 'webhook-id'
export const WEBHOOK_TIMESTAMP_HEADER = 'webhook-timestamp'
export const WEBHOOK_SIGNATURE_HEADER = 'webhook-signature'
/**
 * Label of the Standard Webhooks secret derived from a signing key. A target team holds only the
 * derived secret: with it they can check replays, never sign an event or a replay of ours.
 */
export const WEBHOOK_SECRET_LABEL = 'regionsync-standard-webhooks-v1'

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
  /**
   * Value of `webhook-signature` (Standard Webhooks) for a replay sent at `timestampSec`: one
   * `v1,<base64>` per key, space-separated, so a target holding the secret of any key in the list
   * verifies it while keys rotate.
   */
  signWebhook: (id: string, timestampSec: number, body: Uint8Array | null) => string
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

/**
 * The signing keys, for rotation without downtime: a list, or a string of comma-separated keys
 * (one string serves the option, the flag and the environment alike). The first signs; every one
 * verifies.
 */
export function parseSigningKeys (keys: unknown, option = 'signingKey'): string[] {
  const list = typeof keys === 'string' ? keys.split(',').map((k) => k.trim()) : keys
  if (!Array.isArray(list) || list.length === 0) {
    throw new InvalidOptionError(option, `expects a secret of at least ${MIN_KEY_LENGTH} characters, or a list of them (the first signs, any verifies)`)
  }
  const parsed = list.map((k) => parseSigningKey(k, option))
  if (new Set(parsed).size !== parsed.length) throw new InvalidOptionError(option, 'lists the same key twice')
  return parsed
}

/**
 * The Standard Webhooks secret (`whsec_<base64>`) a target configures to verify replays signed with
 * `signingKey`: HMAC-SHA256(signingKey, "regionsync-standard-webhooks-v1"), base64. The same as
 * `printf %s regionsync-standard-webhooks-v1 | openssl dgst -sha256 -hmac "$KEY" -binary | base64`.
 */
export function webhookSecret (signingKey: string): string {
  // Keys never hold a comma (a comma separates keys): a list here is a mistake, not a key.
  if (typeof signingKey === 'string' && signingKey.includes(',')) throw new InvalidOptionError('signingKey', 'expects one key; derive one secret per key of a list')
  return 'whsec_' + webhookKey(parseSigningKey(signingKey)).toString('base64')
}

function webhookKey (signingKey: string): Buffer {
  return createHmac('sha256', signingKey).update(WEBHOOK_SECRET_LABEL).digest()
}

const EVENT_MAC_PREFIX = Buffer.from('regionsync-event-v1\n')
const EMPTY = new Uint8Array(0)

export function createSigner (keys: string | readonly string[], replayToleranceMs = DEFAULT_REPLAY_TOLERANCE_MS): Signer {
  // Key objects are imported once, not on every signature; and each MAC is fed in as few pieces
  // as its input allows (the bytes, and so the signatures, are what they always were: the label,
  // then each part after a newline). Both are on the plugin's and the replicator's per-event path.
  const parsed = parseSigningKeys(keys)
  const secrets = parsed.map((k) => createSecretKey(Buffer.from(k)))
  const webhookSecrets = parsed.map((k) => createSecretKey(webhookKey(k)))
  const first = secrets[0] as KeyObject
  const eventMac = (secret: KeyObject, payload: Uint8Array): string =>
    createHmac('sha256', secret).update(EVENT_MAC_PREFIX).update(payload).digest('base64url')
  const replayMac = (secret: KeyObject, r: ReplayIdentity, t: string, bodyHash: string): string =>
    // The sequence and resource are signed too: they decide what the target's fence lets through.
    createHmac('sha256', secret)
      .update(`regionsync-replay-v2\n${r.eventId}\n${r.origin}\n${r.method.toUpperCase()}\n${t}\n${r.seq ?? ''}\n${r.resource}\n${bodyHash}`)
      .digest('base64url')
  const bodyHashOf = (r: ReplayIdentity): string => createHash('sha256').update(r.body ?? EMPTY).digest('base64')
  return {
    signEvent: (payload) => 'v1=' + eventMac(first, payload),
    verifyEvent (payload, signature) {
      if (signature === undefined || signature === '') throw new BadSignatureError('event has no signature')
      if (!secrets.some((secret) => safeEqual('v1=' + eventMac(secret, payload), signature))) {
        throw new BadSignatureError('event signature does not verify')
      }
    },
    signReplay (r, nowMs = Date.now()) {
      const t = String(nowMs)
      return `t=${t},v1=${replayMac(first, r, t, bodyHashOf(r))}`
    },
    verifyReplay (r, header, nowMs = Date.now()) {
      if (header === undefined) return false
      const m = /^t=(\d{1,16}),v1=([A-Za-z0-9_-]{43})$/.exec(header)
      if (m === null) return false
      const t = m[1] as string
      if (Math.abs(nowMs - Number(t)) > replayToleranceMs) return false
      const bodyHash = bodyHashOf(r)
      return secrets.some((secret) => safeEqual(replayMac(secret, r, t, bodyHash), m[2] as string))
    },
    signWebhook (id, timestampSec, body) {
      const prefix = `${id}.${timestampSec}.`
      return webhookSecrets
        .map((secret) => 'v1,' + createHmac('sha256', secret).update(prefix).update(body ?? EMPTY).digest('base64'))
        .join(' ')
    }
  }
}

function safeEqual (a: string, b: string): boolean {
  const ab = Buffer.from(a)
  const bb = Buffer.from(b)
  return ab.length === bb.length && timingSafeEqual(ab, bb)
}
