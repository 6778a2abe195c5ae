import type { NatsConnection } from '@nats-io/transport-node'

/**
 * Holds the NATS writes of one turn of the event loop and makes them together at its end, so
 * nats.js sends them in one socket write. nats.js flushes its buffer in a microtask, and Node
 * runs microtasks after every I/O callback: each HTTP request handled in its own callback, or
 * each partition's replay finishing in its own, otherwise costs a write system call here and a
 * read in nats-server (measured: a sixth of the API's CPU per write under load). setImmediate
 * runs once the poll phase has handled every socket that was ready, so a write waits at most
 * for the callbacks of that one turn, and not at all on an idle process.
 */
export class WriteCoalescer {
  #queue: Array<() => void> = []

  /**
   * Runs `write` at the end of this turn of the event loop, in order with the others. A write
   * handles its own errors: one that threw would leave the writes queued after it unmade.
   */
  defer (write: () => void): void {
    if (this.#queue.push(write) === 1) setImmediate(this.#run)
  }

  readonly #run = (): void => {
    const queue = this.#queue
    this.#queue = []
    for (const write of queue) write()
  }
}

const coalescers = new WeakMap<NatsConnection, WriteCoalescer>()

/** The one coalescer of a connection, shared by everything that writes on it. */
export function coalescerOf (nc: NatsConnection): WriteCoalescer {
  let c = coalescers.get(nc)
  if (c === undefined) {
    c = new WriteCoalescer()
    coalescers.set(nc, c)
  }
  return c
}
