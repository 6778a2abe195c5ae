import { InvalidOptionError } from '@regionsync/shared'
import FindMyWay from 'find-my-way'
import {
  parseRouteConfigValue, resolveRouteConfig, type ParsedOptions, type ParsedRouteConfig, type ParsedRouteRule, type RouteConfigValue
} from './options.js'

/** What the plugin does with one route, and why (the `plan()` says both). */
export interface RouteDecision {
  config: ParsedRouteConfig | null
  why: string
}

/**
 * Route rules (`routes` option) matched by find-my-way, Fastify's own router, against each route's
 * registered url: `/api/articles/:slug/*` covers `/api/articles/:slug/favorite` as it would cover a
 * request path, and the most specific rule wins the way the most specific route does.
 */
export class RouteRules {
  readonly #router = FindMyWay()
  readonly #defaults: ParsedOptions

  constructor (defaults: ParsedOptions) {
    this.#defaults = defaults
    for (const rule of defaults.routes) {
      try {
        this.#router.on(rule.methods, rule.url, () => {}, { rule })
      } catch (err) {
        throw new InvalidOptionError(`${rule.name}.url`, `is not a route pattern find-my-way takes, or repeats an earlier rule's for the same method (${(err as Error).message})`, { cause: err })
      }
    }
  }

  /** The rule for one method of a route, if any. */
  match (method: string, url: string): ParsedRouteRule | null {
    const found = this.#router.find(method as 'POST', url)
    return (found?.store as { rule: ParsedRouteRule } | undefined)?.rule ?? null
  }

  /**
   * Settles a route's settings: its own `config.regionsync` wins over a rule (a route that sets some
   * keys keeps the rule's others); without either, the plugin's defaults.
   */
  decide (method: string, url: string, routeValue: unknown): RouteDecision {
    if (!this.#defaults.methods.has(method)) return { config: null, why: `${method} is not a replicated method` }
    const own: RouteConfigValue | undefined = routeValue === undefined ? undefined : parseRouteConfigValue(routeValue, `route ${url}: config.regionsync`)
    const rule = this.match(method, url)
    if (own === false) return { config: null, why: 'opted out by config.regionsync' }
    if (own !== undefined) {
      const base = rule === null || rule.config === false ? {} : rule.config
      return { config: resolveRouteConfig({ ...base, ...own }, this.#defaults), why: rule === null ? 'config.regionsync' : `config.regionsync over ${rule.name}` }
    }
    if (rule !== null) {
      return rule.config === false
        ? { config: null, why: `opted out by ${rule.name} (${rule.url})` }
        : { config: resolveRouteConfig(rule.config, this.#defaults), why: `${rule.name} (${rule.url})` }
    }
    return { config: resolveRouteConfig({}, this.#defaults), why: 'default' }
  }
}
