import { createHash, randomUUID } from 'node:crypto'
import regionsync, { type RegionsyncPluginOptions } from '@regionsync/publisher'
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'

/**
 * A small identity API in the spirit of OpenStack Keystone: users and projects, role grants, and
 * server-assigned ids. It is the demo's source and target regions, and what the tests replicate.
 */
export interface IdentityApiOptions {
  region: string
  /** Bearer token every write must carry; none when undefined. */
  token?: string
  /** Options for the regionsync plugin; false runs the API without it. */
  regionsync: RegionsyncPluginOptions | false
  logger?: FastifyServerOptions['logger']
  /**
   * The region's data. Two apps given the same store are two doors to one region's data: the
   * tests write through a second app without the plugin to change a region behind regionsync's back.
   */
  store?: IdentityStore
}

/** One region's data, as its database would hold it. */
export interface IdentityStore {
  users: Map<string, User>
  projects: Map<string, Project>
  grants: Set<string>
  /** Bumped by every create and delete, so a list knows when its sorted ids are stale. */
  revision: number
}

export function createIdentityStore (): IdentityStore {
  return { users: new Map(), projects: new Map(), grants: new Set(), revision: 0 }
}

/** Lists page at most this many at once (Keystone's default list limit is also a config value). */
const MAX_LIST_LIMIT = 1000

export interface User { id: string, name: string, email: string | null, passwordHash: string | null, enabled: boolean }
export interface Project { id: string, name: string, description: string }

export interface IdentityState {
  users: User[]
  projects: Project[]
  grants: string[]
}

const userBody = {
  type: 'object',
  required: ['user'],
  properties: {
    user: {
      type: 'object',
      properties: {
        id: { type: 'string', minLength: 1, maxLength: 64 },
        name: { type: 'string', minLength: 1, maxLength: 255 },
        email: { type: 'string', maxLength: 255 },
        password: { type: 'string', maxLength: 1024 },
        enabled: { type: 'boolean' }
      },
      additionalProperties: false
    }
  }
} as const

const projectBody = {
  type: 'object',
  required: ['project'],
  properties: {
    project: {
      type: 'object',
      properties: {
        id: { type: 'string', minLength: 1, maxLength: 64 },
        name: { type: 'string', minLength: 1, maxLength: 255 },
        description: { type: 'string', maxLength: 4096 }
      },
      additionalProperties: false
    }
  }
} as const

type UserInput = Partial<{ id: string, name: string, email: string, password: string, enabled: boolean }>
type ProjectInput = Partial<{ id: string, name: string, description: string }>

const hash = (password: string): string => createHash('sha256').update(password).digest('hex')
const publicUser = (u: User): Omit<User, 'passwordHash'> => ({ id: u.id, name: u.name, email: u.email, enabled: u.enabled })

export async function buildIdentityApi (options: IdentityApiOptions): Promise<FastifyInstance> {
  const app = Fastify({ logger: options.logger ?? false })
  const store = options.store ?? createIdentityStore()
  const { users, projects, grants } = store

  if (options.token !== undefined) {
    const expected = `Bearer ${options.token}`
    app.addHook('onRequest', async (request, reply) => {
      if (request.method !== 'GET' && request.headers.authorization !== expected) {
        await reply.code(401).send({ error: 'unauthorized' })
      }
    })
  }
  if (options.regionsync !== false) await app.register(regionsync, options.regionsync)

  app.get('/healthz', { config: { regionsync: false } }, async () => ({ ok: true, region: options.region }))
  app.get('/_state', async (): Promise<IdentityState> => ({
    users: [...users.values()].sort((a, b) => a.id.localeCompare(b.id)),
    projects: [...projects.values()].sort((a, b) => a.id.localeCompare(b.id)),
    grants: [...grants].sort()
  }))

  app.post<{ Body: { user: UserInput } }>('/v3/users', { schema: { body: userBody } }, async (request, reply) => {
    const input = request.body.user
    if (input.name === undefined) return await reply.code(400).send({ error: 'user.name is required' })
    const id = input.id ?? randomUUID().replace(/-/g, '')
    if (users.has(id)) return await reply.code(409).send({ error: `user ${id} exists` })
    // Handlers may rewrite the body in place; regionsync replicates what the client sent (I9).
    if (input.password !== undefined) input.password = hash(input.password)
    const user: User = { id, name: input.name, email: input.email ?? null, passwordHash: input.password ?? null, enabled: input.enabled ?? true }
    users.set(id, user)
    store.revision++
    return await reply.code(201).send({ user: publicUser(user) })
  })
  app.get<{ Params: { id: string } }>('/v3/users/:id', async (request, reply) => {
    const user = users.get(request.params.id)
    return user === undefined ? await reply.code(404).send({ error: 'no such user' }) : { user: publicUser(user) }
  })
  app.patch<{ Params: { id: string }, Body: { user: UserInput } }>('/v3/users/:id', { schema: { body: userBody } }, async (request, reply) => {
    const user = users.get(request.params.id)
    if (user === undefined) return await reply.code(404).send({ error: 'no such user' })
    const input = request.body.user
    if (input.name !== undefined) user.name = input.name
    if (input.email !== undefined) user.email = input.email
    if (input.enabled !== undefined) user.enabled = input.enabled
    if (input.password !== undefined) user.passwordHash = hash(input.password)
    return { user: publicUser(user) }
  })
  app.delete<{ Params: { id: string } }>('/v3/users/:id', async (request, reply) => {
    if (!users.delete(request.params.id)) return await reply.code(404).send({ error: 'no such user' })
    store.revision++
    for (const g of grants) if (g.startsWith(`${request.params.id}/`)) grants.delete(g)
    return await reply.code(204).send()
  })

  app.post<{ Body: { project: ProjectInput } }>('/v3/projects', { schema: { body: projectBody } }, async (request, reply) => {
    const input = request.body.project
    if (input.name === undefined) return await reply.code(400).send({ error: 'project.name is required' })
    const id = input.id ?? randomUUID().replace(/-/g, '')
    if (projects.has(id)) return await reply.code(409).send({ error: `project ${id} exists` })
    const project: Project = { id, name: input.name, description: input.description ?? '' }
    projects.set(id, project)
    store.revision++
    return await reply.code(201).send({ project })
  })
  app.patch<{ Params: { id: string }, Body: { project: ProjectInput } }>('/v3/projects/:id', { schema: { body: projectBody } }, async (request, reply) => {
    const project = projects.get(request.params.id)
    if (project === undefined) return await reply.code(404).send({ error: 'no such project' })
    Object.assign(project, { ...request.body.project, id: project.id })
    return { project }
  })
  app.delete<{ Params: { id: string } }>('/v3/projects/:id', async (request, reply) => {
    if (!projects.delete(request.params.id)) return await reply.code(404).send({ error: 'no such project' })
    store.revision++
    return await reply.code(204).send()
  })

  // Lists, in ascending id order, paged Keystone's way (`limit` and `marker`, the last id seen) or
  // by `offset`; `links.next` is the next page, null on the last. `regionsync verify` reads them.
  listRoute(app, '/v3/users', 'users', users, store, publicUser)
  listRoute(app, '/v3/projects', 'projects', projects, store, (p) => p)
  app.get<{ Params: { id: string } }>('/v3/projects/:id', async (request, reply) => {
    const project = projects.get(request.params.id)
    return project === undefined ? await reply.code(404).send({ error: 'no such project' }) : { project }
  })

  // Create or replace under a given id: what `regionsync verify --repair` sends, the source's
  // representation of a resource. A password is not part of it, so an existing one is kept.
  app.put<{ Params: { id: string }, Body: { user: UserInput } }>('/v3/users/:id', { schema: { body: userBody } }, async (request, reply) => {
    const input = request.body.user
    if (input.name === undefined) return await reply.code(400).send({ error: 'user.name is required' })
    const id = request.params.id
    const existing = users.get(id)
    const user: User = {
      id,
      name: input.name,
      email: input.email ?? null,
      passwordHash: input.password !== undefined ? hash(input.password) : existing?.passwordHash ?? null,
      enabled: input.enabled ?? true
    }
    users.set(id, user)
    store.revision++
    return await reply.code(existing === undefined ? 201 : 200).send({ user: publicUser(user) })
  })
  app.put<{ Params: { id: string }, Body: { project: ProjectInput } }>('/v3/projects/:id', { schema: { body: projectBody } }, async (request, reply) => {
    const input = request.body.project
    if (input.name === undefined) return await reply.code(400).send({ error: 'project.name is required' })
    const id = request.params.id
    const existed = projects.has(id)
    const project: Project = { id, name: input.name, description: input.description ?? '' }
    projects.set(id, project)
    store.revision++
    return await reply.code(existed ? 200 : 201).send({ project })
  })

  // Keystone's role grant: PUT /v3/projects/{p}/users/{u}/roles/{r}. A grant lives and dies with
  // its user (deleting the user removes it), so it is keyed on the user, not on the route's first
  // parameter: grant and user delete then apply in the order the source saw them.
  const grantKey = { regionsync: { resource: (request: { params: unknown }) => ({ type: '/v3/users', id: (request.params as { user: string }).user }) } }
  app.put<{ Params: { project: string, user: string, role: string } }>('/v3/projects/:project/users/:user/roles/:role', { config: grantKey }, async (request, reply) => {
    const { project, user, role } = request.params
    if (!projects.has(project) || !users.has(user)) return await reply.code(404).send({ error: 'no such project or user' })
    grants.add(`${user}/${project}/${role}`)
    return await reply.code(204).send()
  })
  app.delete<{ Params: { project: string, user: string, role: string } }>('/v3/projects/:project/users/:user/roles/:role', { config: grantKey }, async (request, reply) => {
    const { project, user, role } = request.params
    if (!grants.delete(`${user}/${project}/${role}`)) return await reply.code(404).send({ error: 'no such grant' })
    return await reply.code(204).send()
  })
  return app
}

/**
 * GET of a collection in ascending id order. The sorted ids are kept between requests and sorted
 * again only after a create or delete (an update keeps the ids), so paging through a large
 * collection does not sort it once per page.
 */
function listRoute<T extends { id: string }> (app: FastifyInstance, path: string, field: string, items: Map<string, T>, store: IdentityStore, view: (item: T) => unknown): void {
  let sorted: string[] = []
  let sortedRevision = -1
  app.get<{ Querystring: { limit?: string, marker?: string, offset?: string } }>(path, async (request, reply) => {
    const limit = request.query.limit === undefined ? MAX_LIST_LIMIT : Number(request.query.limit)
    const offset = request.query.offset === undefined ? 0 : Number(request.query.offset)
    if (!Number.isInteger(limit) || limit < 1 || limit > MAX_LIST_LIMIT) return await reply.code(400).send({ error: `limit must be 1-${MAX_LIST_LIMIT}` })
    if (!Number.isInteger(offset) || offset < 0) return await reply.code(400).send({ error: 'offset must be a whole number' })
    if (sortedRevision !== store.revision) {
      sorted = [...items.keys()].sort((a, b) => a < b ? -1 : a > b ? 1 : 0)
      sortedRevision = store.revision
    }
    let start = offset
    const marker = request.query.marker
    if (marker !== undefined) {
      let lo = 0
      let hi = sorted.length
      while (lo < hi) {
        const mid = (lo + hi) >>> 1
        if ((sorted[mid] as string) <= marker) lo = mid + 1
        else hi = mid
      }
      start = lo
    }
    const page: unknown[] = []
    let i = start
    for (; i < sorted.length && page.length < limit; i++) {
      const item = items.get(sorted[i] as string)
      if (item !== undefined) page.push(view(item))
    }
    const last = page.length === 0 ? undefined : (page[page.length - 1] as { id: string }).id
    const next = i < sorted.length && last !== undefined ? `${path}?limit=${limit}&marker=${encodeURIComponent(last)}` : null
    return { [field]: page, links: { self: request.url, next, previous: null } }
  })
}

export { identityVerifyConfig } from './verify-config.js'
