import type { EventEmitter } from 'node:events'
import { Command, Option } from 'commander'
import {
  DEFAULT_NAMESPACE, DEFAULT_NATS_URL, DEV_SIGNING_KEY, InvalidOptionError, parseEncryptionKey, parseSigningKeys, parseStartFrom, validateNamespace,
  validateRegion, type StartFrom
} from '@regionsync/shared'
import { parseTargetUrl } from './options.js'

/**
 * The command line's one options parser: every flag's definition (its environment variable, its
 * default, its help line) and the function that checks its value. A value is checked here, when
 * commander reads it from the flag or the variable, and nowhere else; the checks that need two
 * flags at once live in the `resolve*` functions of the command that has them.
 */

export type Env = Record<string, string | undefined>

/** All the command's output goes through this; logs go through pino. */
export interface Io {
  out: (line: string) => void
  err: (line: string) => void
  /** Where flags without a value on the command line are read from (process.env for the real command). */
  env: Env
}

/**
 * Exit codes, the same for every subcommand. 1 is a result, not a failure: the command ran and
 * found what a script should act on.
 */
export const EXIT = {
  ok: 0,
  /** verify found differences; a dead letter failed again on `dlq replay`, or the `--id` names none. */
  findings: 1,
  /** Bad configuration: a flag or variable missing or malformed, NATS unreachable at start, a port in use. */
  badConfiguration: 2,
  /** A failure while running: NATS lost, no replicator answered, an unexpected error. */
  runtimeFailure: 3
} as const

export const EXIT_CODES_HELP = `
Exit codes:
  0  success
  1  the command ran and found something to act on (verify: differences; dlq replay: a letter failed again, or no letter has that --id)
  2  bad configuration: one line on stderr names the flag (or its variable) and what it expects; NATS unreachable at start
  3  runtime failure: NATS lost while running, no replicator answered, an unexpected error

Every flag also reads the environment variable shown next to it; a flag on the command line wins.`

/** Values from the environment that mean "on" for a boolean flag; anything else is "off". */
const TRUE_VALUES = new Set(['1', 'true', 'yes'])

/**
 * commander reads `Option.env()` variables from `process.env`; this reads them from the `Io`'s env
 * instead (tests and embedders pass their own), skips empty values (compose files set
 * `VAR: ${VAR:-}`), and reads a boolean's variable as 1/true/yes rather than "is set", so
 * `REGIONSYNC_DEV=0` does not turn dev mode on. It is a port of commander 14's own
 * `_parseOptionsEnv` with the source swapped; package.json pins commander to 14.0.x for it.
 */
export class EnvCommand extends Command {
  env: Env = process.env

  override createCommand (name?: string): EnvCommand {
    const sub = new EnvCommand(name)
    sub.env = this.env
    return sub
  }

  _parseOptionsEnv (): void {
    for (const option of this.options) {
      const variable = option.envVar
      if (variable === undefined) continue
      const raw = this.env[variable]
      if (raw === undefined || raw === '') continue
      const key = option.attributeName()
      if (this.getOptionValue(key) !== undefined && !['default', 'config', 'env'].includes(this.getOptionValueSource(key) ?? '')) continue
      const events = this as unknown as EventEmitter
      if (option.required || option.optional) events.emit(`optionEnv:${option.name()}`, raw)
      else if (TRUE_VALUES.has(raw.toLowerCase())) events.emit(`optionEnv:${option.name()}`)
    }
  }
}

/** A flag with its variable, help line and (optional) check. */
export function flag<T> (flags: string, description: string, settings: { env?: string, default?: string, parse?: (value: string, name: string) => T } = {}): Option {
  const option = new Option(flags, description)
  if (settings.env !== undefined) option.env(settings.env)
  if (settings.default !== undefined) option.default(settings.default)
  const parse = settings.parse
  if (parse !== undefined) {
    const name = option.long ?? flags
    option.argParser((value: string) => parse(value, name))
  }
  return option
}

/** A whole number from `min` to `max`. */
export function whole (min: number, max: number) {
  return (value: string, name: string): number => {
    const n = Number(value)
    if (!/^\d+$/.test(value) || n < min || n > max) throw new InvalidOptionError(name, `expects a whole number from ${min} to ${max}`)
    return n
  }
}

export function port (value: string, name: string): number {
  const n = Number(value)
  if (!/^\d+$/.test(value) || n > 65535) throw new InvalidOptionError(name, 'expects a port number from 0 to 65535 (0 picks a free one)')
  return n
}

export function region (value: string, name: string): string {
  return validateRegion(value, name)
}

export function namespace (value: string, name: string): string {
  return validateNamespace(value, name)
}

export function targetUrl (value: string, name: string): URL {
  return parseTargetUrl(value, name)
}

/**
 * The one home of `--signing-key`: the flag's check (before connecting, so a bad value is reported
 * by its flag whether or not NATS is up) and `signingKeyOf`, which fills in the dev key.
 */
export function signingKey (value: string, name: string): string {
  parseSigningKeys(value, name)
  return value
}

/** The key from `--signing-key`, or the well-known dev key with `--dev`; `why` says what needs it. */
export function signingKeyOf (value: string | undefined, dev: boolean | undefined, why: string): string {
  if (value !== undefined) return value
  if (dev !== true) throw new InvalidOptionError('--signing-key', `is required ${why} (or REGIONSYNC_SIGNING_KEY) (--dev allows the insecure dev key)`)
  return DEV_SIGNING_KEY
}

export function encryptionKey (value: string, name: string): string {
  parseEncryptionKey(value, name)
  return value
}

export function startFrom (value: string, name: string): StartFrom {
  return parseStartFrom(value, name)
}

const UNIT_MS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000 }

/** `30s`, `10m`, `1h`: at least 10 seconds, at most a day. */
export function duration (value: string, name: string): number {
  const m = /^(\d+)(s|m|h)$/.exec(value)
  const ms = m === null ? NaN : Number(m[1]) * (UNIT_MS[m[2] as string] as number)
  if (!(ms >= 10_000 && ms <= 86_400_000)) throw new InvalidOptionError(name, 'expects a duration from 10s to 24h, such as 30s, 10m or 1h')
  return ms
}

/** A value that must be given, by flag or variable. */
export function required<T> (value: T | undefined, name: string, env: string | undefined, expected: string): T {
  if (value === undefined) throw new InvalidOptionError(name, `is required${env === undefined ? '' : ` (or ${env})`}; expects ${expected}`)
  return value
}

export function natsFlag (): Option {
  return flag('--nats <urls>', 'NATS servers, comma-separated', { env: 'NATS_URL', default: DEFAULT_NATS_URL })
}

export function namespaceFlag (): Option {
  return flag('--namespace <ns>', 'prefix of every stream, consumer and bucket regionsync uses', { env: 'REGIONSYNC_NAMESPACE', default: DEFAULT_NAMESPACE, parse: namespace })
}

/** The two flags every subcommand that talks to NATS has. */
export function natsFlags (): [Option, Option] {
  return [natsFlag(), namespaceFlag()]
}
