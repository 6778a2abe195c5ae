import { Readable } from 'node:stream'
import { BodyTooLargeError } from './errors.js'

/**
 * Reads the request body as the client sent it, before any parser or handler sees it (I9), and
 * hands Fastify an identical stream to parse. Refuses a body over `limit` before the handler runs,
 * so the source never commits a write it cannot replicate.
 */
export async function captureBody (payload: NodeJS.ReadableStream, declaredLength: string | undefined, limit: number): Promise<Buffer> {
  if (declaredLength !== undefined && Number(declaredLength) > limit) {
    (payload as Readable).resume?.()
    throw new BodyTooLargeError(Number(declaredLength), limit)
  }
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of payload) {
    const b = typeof chunk === 'string' ? Buffer.from(chunk) : chunk as Buffer
    size += b.length
    if (size > limit) {
      (payload as Readable).resume?.()
      throw new BodyTooLargeError(null, limit)
    }
    chunks.push(b)
  }
  return chunks.length === 1 ? chunks[0] as Buffer : Buffer.concat(chunks, size)
}

/** A stream Fastify's body parsers can read the captured bytes from. */
export function replayStream (body: Buffer): Readable {
  const stream = Readable.from(body.length === 0 ? [] : [body], { objectMode: false })
  // Fastify compares this with Content-Length; the bytes are the ones that arrived.
  ;(stream as Readable & { receivedEncodedLength: number }).receivedEncodedLength = body.length
  return stream
}
