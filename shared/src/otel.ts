import type * as OtelApi from '@opentelemetry/api'

/** The `@opentelemetry/api` module, when the application has it installed. */
export type Otel = typeof OtelApi

let loading: Promise<Otel | null> | undefined

/**
 * Loads `@opentelemetry/api` if the application has it (an optional peer dependency), once per
 * process; null when it is absent. Without a registered SDK its tracers make no spans and cost
 * next to nothing, so callers need no switch of their own.
 */
export async function loadOtel (): Promise<Otel | null> {
  loading ??= import('@opentelemetry/api').then((m) => m, () => null)
  return await loading
}
