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
}

interface User { id: string, name: string, email: string | null, passwordHash: string | null, enabled: boolean }
interface Project { id: string, name: string, description: string }

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
  const users = new Map<string, User>()
  const projects = new Map<string, Project>()
  const grants = new Set<string>()

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
    return await reply.code(204).send()
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
