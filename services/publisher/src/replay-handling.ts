import {
  IDEMPOTENCY_KEY_HEADER, REPLAY_ORIGIN_HEADER, REPLAY_RESOURCE_HEADER, REPLAY_SEQ_HEADER, REPLAY_SIGNATURE_HEADER, retryUntil, type Signer
} from '@regionsync/shared'
import type { FastifyBaseLogger, FastifyReply, FastifyRequest } from 'fastify'
import { ReplayBodyMismatchError, ReplayInProgressError, UnavailableError } from './errors.js'
import type { PublisherMetrics } from './metrics.js'
import { MAX_RECORDED_BODY_BYTES, type Claim, type RecordedAnswer, type ReplayGuard } from './replay-guard.js'

/**
 * Response header that says what the guard made of a replay: applied (ran and recorded), or, for
 * one it did not run, superseded, in-progress, different-body, duplicate.
 */
export const REPLAY_OUTCOME_HEADER = 'x-regionsync-outcome'

/** Wait between attempts to record an applied replay while JetStream is unreachable. */
const RECORD_RETRY_MS = 250

/** A genuine replay: what its signature covers. */
export interface GenuineReplay {
  eventId: string
  origin: string
  seq: number | null
  resource: string
}

/**
 * A replay carries a signature only a replicator with the signing key can make (I6); it covers the
 * event id, origin, method, body, stream sequence and resource key. Null when the request is not a
 * genuine replay: it is then an ordinary write.
 */
export function genuineReplay (request: FastifyRequest, body: Buffer | null, signer: Signer): GenuineReplay | null {
  const sig = request.headers[REPLAY_SIGNATURE_HEADER]
  const id = request.headers[IDEMPOTENCY_KEY_HEADER]
  const origin = request.headers[REPLAY_ORIGIN_HEADER]
  if (typeof sig !== 'string' || typeof id !== 'string' || typeof origin !== 'string') return null
  const seqHeader = request.headers[REPLAY_SEQ_HEADER]
  const seq = typeof seqHeader === 'string' && /^\d{1,15}$/.test(seqHeader) ? Number(seqHeader) : null
  const resourceHeader = request.headers[REPLAY_RESOURCE_HEADER]
  let resource = ''
  try {
    resource = typeof resourceHeader === 'string' ? decodeURIComponent(resourceHeader) : ''
  } catch {
    return null
  }
  return signer.verifyReplay({ eventId: id, origin, method: request.method, body, seq, resource }, sig) ? { eventId: id, origin, seq, resource } : null
}

const MESSAGES = {
  'in-progress': 'regionsync is applying this replay in another request; retry after Retry-After',
  'different-body': 'regionsync already has a replay with this Idempotency-Key and another body',
  unavailable: 'regionsync cannot check this replay against its record now; nothing was changed'
} as const

/**
 * The plugin's side of a replay on the target (I4): before the handler, the guard's verdict
 * (run it, or answer without it); after a 2xx, the answer and the fence recorded before the reply
 * leaves; after anything else, the claim given back for a retry.
 */
export class ReplayHandling {
  readonly #guard: () => ReplayGuard | null
  readonly #metrics: PublisherMetrics
  readonly #region: string
  readonly #log: FastifyBaseLogger
  readonly #closing: () => boolean

  /** `guard` is null until the plugin has reached NATS, and always when the guard is off. */
  constructor (guard: () => ReplayGuard | null, metrics: PublisherMetrics, region: string, log: FastifyBaseLogger, closing: () => boolean) {
    this.#guard = guard
    this.#metrics = metrics
    this.#region = region
    this.#log = log
    this.#closing = closing
  }

  /**
   * Decides before the handler. The claim to settle after the handler when it runs; null when the
   * reply was sent here (or there is no guard). A replay that must wait, or cannot be checked, is
   * refused with a thrown error (409, 422, 503) the replicator retries or dead-letters on its code.
   */
  async before (replay: GenuineReplay, body: Buffer | null, reply: FastifyReply): Promise<Claim | null> {
    const guard = this.#guard()
    let verdict
    try {
      if (guard === null) throw new Error('regionsync has not reached NATS yet')
      verdict = await guard.claim(replay.eventId, body, replay.seq, replay.resource)
    } catch (err) {
      this.#log.warn({ err, eventId: replay.eventId }, 'regionsync could not claim a replay')
      this.#count('unavailable')
      // 503: the replicator retries it after Retry-After, and nothing ran.
      reply.header('retry-after', '1')
      throw new UnavailableError(MESSAGES.unavailable)
    }
    switch (verdict.kind) {
      case 'run':
        return verdict.claim
      case 'duplicate': {
        const { answer } = verdict
        this.#count('duplicate')
        reply.header(REPLAY_OUTCOME_HEADER, answer.status === 208 ? 'superseded' : 'duplicate')
        if (answer.contentType !== null) reply.header('content-type', answer.contentType)
        await reply.code(answer.status).send(Buffer.from(answer.body, 'base64'))
        return null
      }
      case 'superseded':
        this.#count('superseded')
        await reply.code(208).header(REPLAY_OUTCOME_HEADER, 'superseded').send()
        return null
      case 'in-progress':
        this.#count('in-progress')
        reply.header('retry-after', '1').header(REPLAY_OUTCOME_HEADER, 'in-progress')
        throw new ReplayInProgressError(MESSAGES['in-progress'])
      case 'different-body':
        this.#count('different-body')
        reply.header(REPLAY_OUTCOME_HEADER, 'different-body')
        throw new ReplayBodyMismatchError(MESSAGES['different-body'])
    }
  }

  /**
   * After the handler answered: a 2xx is recorded (answer and fence) before the reply leaves,
   * waiting for JetStream if it must; anything else gives the claim back.
   */
  async after (claim: Claim, reply: FastifyReply, payload: unknown): Promise<void> {
    const guard = this.#guard() as ReplayGuard
    if (reply.statusCode < 200 || reply.statusCode > 299) {
      this.#count('released')
      await guard.release(claim).catch((err: unknown) => {
        this.#log.warn({ err, eventId: claim.eventId }, 'regionsync could not release a replay claim; a retry waits until it is abandoned')
      })
      return
    }
    this.#count('applied')
    const body = typeof payload === 'string' ? Buffer.from(payload) : Buffer.isBuffer(payload) ? payload : Buffer.alloc(0)
    const type = reply.getHeader('content-type')
    const answer: RecordedAnswer = {
      status: reply.statusCode,
      contentType: typeof type === 'string' ? type : null,
      body: body.length > MAX_RECORDED_BODY_BYTES ? '' : body.toString('base64')
    }
    // The write is committed: until the record holds, a redelivery would run it again. When
    // JetStream is unreachable the replicator cannot record it either, and cannot redeliver
    // before JetStream is back, so the answer waits for JetStream rather than going out unrecorded.
    try {
      await retryUntil(async () => { await guard.finish(claim, answer) }, {
        retryable: () => !this.#closing(),
        delayMs: () => RECORD_RETRY_MS,
        onRetry: (err) => { this.#log.warn({ err, eventId: claim.eventId }, 'regionsync could not record an applied replay yet; retrying') }
      })
      // Tells the replicator this target remembers the replay (its id, its answer, its fence):
      // a redelivery is answered from the record, whatever the replicator kept.
      reply.header(REPLAY_OUTCOME_HEADER, 'applied')
    } catch (err) {
      this.#log.warn({ err, eventId: claim.eventId }, 'regionsync could not record an applied replay')
    }
  }

  /** A genuine replay applied without a guard (option replayGuard: false). */
  appliedUnguarded (): void {
    this.#count('applied')
  }

  #count (outcome: string): void {
    this.#metrics.replaysReceived.inc({ region: this.#region, outcome })
  }
}
