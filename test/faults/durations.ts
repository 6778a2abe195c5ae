/**
 * How long the suite attacks each system. `FAULTS_QUICK=1` shortens every window (CI's subset);
 * the full run is the one the README's table comes from.
 */
export const QUICK = process.env.FAULTS_QUICK === '1'

/** `fullMs` normally, `quickMs` under FAULTS_QUICK=1. */
export function ms (fullMs: number, quickMs: number): number {
  return QUICK ? quickMs : fullMs
}

/**
 * Ack wait of every region's consumers here. The command creates them with 30 s; a killed
 * replicator's in-flight event waits that long before another instance gets it, so the suite makes
 * them first with 5 s, as an operator may (the consumer is shared: every instance uses it as made).
 */
export const ACK_WAIT_MS = 5000

/** `--timeout-ms` of the replicators: one replay request may take this long before it is retried. */
export const REQUEST_TIMEOUT_MS = 2000

/** Longest wait, after the last write, for every region to equal the source. */
export const CONVERGE_MS = 90_000
