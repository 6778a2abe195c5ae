import { pino, type DestinationStream, type Logger, type LoggerOptions } from 'pino'

export type { Logger } from 'pino'

export const DEFAULT_LOG_LEVEL = 'info'

/**
 * The one logger factory: constant messages, data in the object, errors under `err`. Logs go to
 * stdout unless a destination is given (a command whose stdout is its report logs to stderr).
 */
export function createLogger (options: LoggerOptions = {}, destination?: DestinationStream): Logger {
  const o = { level: process.env.LOG_LEVEL ?? DEFAULT_LOG_LEVEL, base: undefined, ...options }
  return destination === undefined ? pino(o) : pino(o, destination)
}
