import { pino, type Logger, type LoggerOptions } from 'pino'

export type { Logger } from 'pino'

export const DEFAULT_LOG_LEVEL = 'info'

/** The one logger factory: constant messages, data in the object, errors under `err`. */
export function createLogger (options: LoggerOptions = {}): Logger {
  return pino({
    level: process.env.LOG_LEVEL ?? DEFAULT_LOG_LEVEL,
    base: undefined,
    ...options
  })
}
