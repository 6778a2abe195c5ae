import { createHmac, randomBytes, scryptSync, timingSafeEqual } from 'node:crypto'
import regionsync, { type RegionsyncPluginOptions } from '@regionsync/publisher'
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest, type FastifyServerOptions } from 'fastify'

/**
 * A "RealWorld" (Conduit) API, written the way Fastify 4 applications commonly are: JWT auth in an
 * `onRequest` hook that answers 401 early, writes scoped to the caller, server-assigned slugs and
 * integer ids, response schemas that strip internal fields (`id`, `authorId`, the password hash),
 * comments nested under articles, bodyless POSTs (favorite, follow), a login POST that changes
 * nothing, a handler that hashes the password in `request.body`, and async handlers that answer
 * `reply.code(404).send(...)` without returning it. It runs on Fastify 4 and 5 (pass `fastify`).
 *
 * It is regionsync's second example: what it takes to replicate an application nobody wrote for
 * it. The route settings it needs are in CONDUIT_ROUTE_SETTINGS, and nowhere else.
 */
export interface ConduitApiOptions {
  region: string
  /** HS256 secret of the JWTs; the same in every region, so a user's token works everywhere. */
  jwtSecret: string
  /** Options for the regionsync plugin; false runs the API without it. */
  regionsync: RegionsyncPluginOptions | false
  /**
   * Take `article.slug` and `comment.id` from a create's body when given and free, as an admin
   * import would. With false the API assigns its own, as most real APIs do; regionsync then
   * learns the target's ids instead. @default true
   */
  acceptClientIds?: boolean
  /** First integer id of users, articles and comments (regions often use disjoint ranges). @default 1 */
  firstId?: number
  /** The Fastify factory to build on (Fastify 4's or 5's). @default the installed fastify */
  fastify?: (opts?: FastifyServerOptions) => FastifyInstance
  logger?: FastifyServerOptions['logger']
}

/**
 * Every route setting regionsync needs on this API: login changes nothing (and its body is a
 * password), and an article's identifier is its slug, since the response schema strips `id`.
 * Comments need none: `comment.id` is found by the default. Users need none: the registration's
 * answer names no id, so it is not a create.
 */
export const CONDUIT_ROUTE_SETTINGS: Readonly<Record<string, { regionsync: false | { createdId: string } }>> = {
  'POST /api/users/login': { regionsync: false },
  'POST /api/articles': { regionsync: { createdId: 'article.slug' } }
}

interface User { id: number, username: string, email: string, passwordHash: string, bio: string, image: string | null }
interface Article {
  id: number, slug: string, title: string, description: string, body: string, tagList: string[], authorId: number,
  createdAt: string, updatedAt: string, favoritedBy: Set<number>
}
interface Comment { id: number, articleId: number, body: string, authorId: number, createdAt: string }

/** A region's data as a client sees it (usernames and slugs, never internal ids or hashes); for tests and `GET /_conduit/state`. */
export interface ConduitState {
  users: Array<{ username: string, email: string, bio: string, image: string | null, following: string[] }>
  articles: Array<{ slug: string, title: string, description: string, body: string, tagList: string[], author: string, favoritedBy: string[] }>
  comments: Array<{ id: number, article: string, body: string, author: string }>
}

const userResponse = {
  type: 'object',
  properties: {
    user: {
      type: 'object',
      properties: { email: { type: 'string' }, token: { type: 'string' }, username: { type: 'string' }, bio: { type: 'string' }, image: { type: ['string', 'null'] } }
    }
  }
} as const
const profile = {
  type: 'object',
  properties: { username: { type: 'string' }, bio: { type: 'string' }, image: { type: ['string', 'null'] }, following: { type: 'boolean' } }
} as const
const articleObject = {
  type: 'object',
  properties: {
    slug: { type: 'string' },
    title: { type: 'string' },
    description: { type: 'string' },
    body: { type: 'string' },
    tagList: { type: 'array', items: { type: 'string' } },
    createdAt: { type: 'string' },
    updatedAt: { type: 'string' },
    favorited: { type: 'boolean' },
    favoritesCount: { type: 'integer' },
    author: profile
  }
} as const
const articleResponse = { type: 'object', properties: { article: articleObject } } as const
const commentObject = {
  type: 'object',
  properties: { id: { type: 'integer' }, body: { type: 'string' }, createdAt: { type: 'string' }, author: profile }
} as const
/** Response schemas keyed by a plain number: the handlers also answer 4xx, which the schema leaves alone. */
const respond = (status: number, schema: unknown): Record<number, unknown> => ({ [status]: schema })
const str = { type: 'string', minLength: 1, maxLength: 4096 } as const

const registerBody = {
  type: 'object',
  required: ['user'],
  properties: {
    user: {
      type: 'object',
      required: ['username', 'email', 'password'],
      properties: { username: { type: 'string', pattern: '^[A-Za-z0-9_-]{1,64}$' }, email: str, password: str }
    }
  }
} as const
const loginBody = {
  type: 'object',
  required: ['user'],
  properties: { user: { type: 'object', required: ['email', 'password'], properties: { email: str, password: str } } }
} as const
const updateUserBody = {
  type: 'object',
  required: ['user'],
  properties: { user: { type: 'object', properties: { email: str, password: str, bio: { type: 'string' }, image: { type: ['string', 'null'] } } } }
} as const
const articleBody = {
  type: 'object',
  required: ['article'],
  properties: {
    article: {
      type: 'object',
      properties: { slug: { type: 'string', pattern: '^[a-z0-9-]{1,128}$' }, title: str, description: str, body: str, tagList: { type: 'array', items: { type: 'string' } } }
    }
  }
} as const
const commentBody = {
  type: 'object',
  required: ['comment'],
  properties: { comment: { type: 'object', required: ['body'], properties: { id: { type: 'integer', minimum: 1 }, body: str } } }
} as const

type Claims = { sub: string, exp: number }
declare module 'fastify' {
  interface FastifyRequest { claims: Claims | null }
}

export function signJwt (secret: string, username: string, ttlS = 3600): string {
  const enc = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url')
  const head = `${enc({ alg: 'HS256', typ: 'JWT' })}.${enc({ sub: username, iat: Math.floor(Date.now() / 1000), exp: Math.floor(Date.now() / 1000) + ttlS })}`
  return `${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`
}

function verifyJwt (secret: string, token: string): Claims | null {
  const [h, p, s] = token.split('.')
  if (h === undefined || p === undefined || s === undefined) return null
  const expected = createHmac('sha256', secret).update(`${h}.${p}`).digest()
  const given = Buffer.from(s, 'base64url')
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return null
  try {
    const claims = JSON.parse(Buffer.from(p, 'base64url').toString('utf8')) as Claims
    return typeof claims.sub === 'string' && typeof claims.exp === 'number' && claims.exp * 1000 > Date.now() ? claims : null
  } catch {
    return null
  }
}

function hashPassword (password: string): string {
  const salt = randomBytes(16)
  return `${salt.toString('hex')}:${scryptSync(password, salt, 32).toString('hex')}`
}

function passwordMatches (password: string, stored: string): boolean {
  const [salt, hash] = stored.split(':') as [string, string]
  return timingSafeEqual(scryptSync(password, Buffer.from(salt, 'hex'), 32), Buffer.from(hash, 'hex'))
}

const slugify = (title: string): string => title.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '').slice(0, 100) || 'article'

const unprocessable = (field: string, message: string): { errors: Record<string, string[]> } => ({ errors: { [field]: [message] } })

export async function buildConduitApi (options: ConduitApiOptions): Promise<FastifyInstance> {
  const app = (options.fastify ?? Fastify)({ logger: options.logger ?? false })
  const acceptClientIds = options.acceptClientIds ?? true
  // One sequence per table, as a database has.
  const next = { user: options.firstId ?? 1, article: options.firstId ?? 1, comment: options.firstId ?? 1 }
  const users = new Map<number, User>()
  const articles = new Map<string, Article>()
  const comments = new Map<number, Comment>()
  const follows = new Set<string>()
  const byName = (username: string): User | undefined => [...users.values()].find((u) => u.username === username)
  const byEmail = (email: string): User | undefined => [...users.values()].find((u) => u.email === email)

  app.decorateRequest('claims', null)
  // Token auth as Conduit specifies it (`Authorization: Token <jwt>`), checked before the body is
  // read; a bad token is answered here and the handler never runs.
  const authenticate = async (request: FastifyRequest, reply: FastifyReply): Promise<void> => {
    const m = /^(?:Token|Bearer) (.+)$/.exec(request.headers.authorization ?? '')
    const claims = m === null ? null : verifyJwt(options.jwtSecret, m[1] as string)
    if (claims === null) {
      await reply.code(401).send({ errors: { token: ['is missing or invalid'] } })
      return
    }
    request.claims = claims
  }
  const optionalAuth = async (request: FastifyRequest): Promise<void> => {
    const m = /^(?:Token|Bearer) (.+)$/.exec(request.headers.authorization ?? '')
    request.claims = m === null ? null : verifyJwt(options.jwtSecret, m[1] as string)
  }
  const viewer = (request: FastifyRequest): User | undefined => request.claims === null ? undefined : byName(request.claims.sub)

  const profileOf = (u: User, me: User | undefined): Record<string, unknown> =>
    ({ username: u.username, bio: u.bio, image: u.image, following: me !== undefined && follows.has(`${me.id}:${u.id}`) })
  const articleOf = (a: Article, me: User | undefined): Record<string, unknown> => ({
    ...a,
    favorited: me !== undefined && a.favoritedBy.has(me.id),
    favoritesCount: a.favoritedBy.size,
    author: profileOf(users.get(a.authorId) as User, me)
  })
  const commentOf = (c: Comment, me: User | undefined): Record<string, unknown> => ({ ...c, author: profileOf(users.get(c.authorId) as User, me) })
  // The whole row goes out, id and password hash included; the response schema strips them, as in
  // many real apps, so what the client gets is the only place to read a created id from.
  const userOf = (u: User): Record<string, unknown> =>
    ({ ...u, token: signJwt(options.jwtSecret, u.username) })

  if (options.regionsync !== false) await app.register(regionsync as never, options.regionsync)
  const settings = (method: string, url: string): { config?: (typeof CONDUIT_ROUTE_SETTINGS)[string] } => {
    const s = CONDUIT_ROUTE_SETTINGS[`${method} ${url}`]
    return s === undefined ? {} : { config: s }
  }

  app.get('/_conduit/state', { config: { regionsync: false } }, async (): Promise<ConduitState> => {
    const name = (id: number): string => (users.get(id) as User).username
    return {
      users: [...users.values()].map((u) => ({
        username: u.username, email: u.email, bio: u.bio, image: u.image,
        following: [...follows].filter((f) => f.startsWith(`${u.id}:`)).map((f) => name(Number(f.split(':')[1]))).sort()
      })).sort((a, b) => a.username.localeCompare(b.username)),
      articles: [...articles.values()].map((a) => ({
        slug: a.slug, title: a.title, description: a.description, body: a.body, tagList: a.tagList, author: name(a.authorId),
        favoritedBy: [...a.favoritedBy].map(name).sort()
      })).sort((a, b) => a.slug.localeCompare(b.slug)),
      comments: [...comments.values()].map((c) => ({
        id: c.id, article: [...articles.values()].find((a) => a.id === c.articleId)?.slug ?? '?', body: c.body, author: name(c.authorId)
      })).sort((a, b) => a.id - b.id)
    }
  })

  app.post<{ Body: { user: { username: string, email: string, password: string } } }>('/api/users',
    { schema: { body: registerBody, response: respond(201, userResponse) } }, async (request, reply) => {
      const input = request.body.user
      if (byName(input.username) !== undefined) return await reply.code(422).send(unprocessable('username', 'has already been taken'))
      if (byEmail(input.email) !== undefined) return await reply.code(422).send(unprocessable('email', 'has already been taken'))
      // Hashed in place, as many apps do before handing the body to their ORM.
      input.password = hashPassword(input.password)
      const user: User = { id: next.user++, username: input.username, email: input.email, passwordHash: input.password, bio: '', image: null }
      users.set(user.id, user)
      return await reply.code(201).send({ user: userOf(user) })
    })

  app.post<{ Body: { user: { email: string, password: string } } }>('/api/users/login',
    { ...settings('POST', '/api/users/login'), schema: { body: loginBody, response: respond(200, userResponse) } }, async (request, reply) => {
      const user = byEmail(request.body.user.email)
      if (user === undefined || !passwordMatches(request.body.user.password, user.passwordHash)) {
        return await reply.code(422).send(unprocessable('email or password', 'is invalid'))
      }
      return { user: userOf(user) }
    })

  app.get('/api/user', { onRequest: authenticate, schema: { response: respond(200, userResponse) } }, async (request, reply) => {
    const me = viewer(request)
    if (me === undefined) {
      reply.code(404).send({ errors: { user: ['not found'] } })
      return
    }
    return { user: userOf(me) }
  })

  app.put<{ Body: { user: Partial<{ email: string, password: string, bio: string, image: string | null }> } }>('/api/user',
    { onRequest: authenticate, schema: { body: updateUserBody, response: respond(200, userResponse) } }, async (request, reply) => {
      const me = viewer(request)
      if (me === undefined) {
        reply.code(404).send({ errors: { user: ['not found'] } })
        return
      }
      const input = request.body.user
      if (input.password !== undefined) input.password = hashPassword(input.password)
      if (input.email !== undefined) me.email = input.email
      if (input.password !== undefined) me.passwordHash = input.password
      if (input.bio !== undefined) me.bio = input.bio
      if (input.image !== undefined) me.image = input.image
      return { user: userOf(me) }
    })

  app.get<{ Params: { username: string } }>('/api/profiles/:username', { onRequest: optionalAuth, schema: { response: respond(200, { type: 'object', properties: { profile } }) } },
    async (request, reply) => {
      const u = byName(request.params.username)
      if (u === undefined) return await reply.code(404).send({ errors: { profile: ['not found'] } })
      return { profile: profileOf(u, viewer(request)) }
    })

  const follow = (on: boolean) => async (request: FastifyRequest<{ Params: { username: string } }>, reply: FastifyReply) => {
    const me = viewer(request)
    const u = byName(request.params.username)
    if (me === undefined || u === undefined) {
      reply.code(404).send({ errors: { profile: ['not found'] } })
      return
    }
    if (on) follows.add(`${me.id}:${u.id}`)
    else follows.delete(`${me.id}:${u.id}`)
    return { profile: profileOf(u, me) }
  }
  const profileResponse = { response: respond(200, { type: 'object', properties: { profile } }) }
  app.post<{ Params: { username: string } }>('/api/profiles/:username/follow', { onRequest: authenticate, schema: profileResponse }, follow(true))
  app.delete<{ Params: { username: string } }>('/api/profiles/:username/follow', { onRequest: authenticate, schema: profileResponse }, follow(false))

  app.get<{ Querystring: { author?: string, tag?: string } }>('/api/articles', { onRequest: optionalAuth, schema: { response: respond(200, { type: 'object', properties: { articles: { type: 'array', items: articleObject }, articlesCount: { type: 'integer' } } }) } },
    async (request) => {
      const me = viewer(request)
      const list = [...articles.values()]
        .filter((a) => request.query.author === undefined || users.get(a.authorId)?.username === request.query.author)
        .filter((a) => request.query.tag === undefined || a.tagList.includes(request.query.tag))
        .sort((a, b) => b.id - a.id)
      return { articles: list.map((a) => articleOf(a, me)), articlesCount: list.length }
    })

  app.post<{ Body: { article: { slug?: string, title?: string, description?: string, body?: string, tagList?: string[] } } }>('/api/articles',
    { ...settings('POST', '/api/articles'), onRequest: authenticate, schema: { body: articleBody, response: respond(201, articleResponse) } }, async (request, reply) => {
      const me = viewer(request)
      if (me === undefined) {
        reply.code(404).send({ errors: { user: ['not found'] } })
        return
      }
      const input = request.body.article
      if (input.title === undefined || input.description === undefined || input.body === undefined) {
        return await reply.code(422).send(unprocessable('article', 'needs title, description and body'))
      }
      // A requested slug is kept when free, else suffixed: the API, not the client, has the last word.
      let slug = acceptClientIds && input.slug !== undefined ? input.slug : `${slugify(input.title)}-${randomBytes(3).toString('hex')}`
      while (articles.has(slug)) slug = `${slug}-${randomBytes(2).toString('hex')}`
      const now = new Date().toISOString()
      const article: Article = {
        id: next.article++, slug, title: input.title, description: input.description, body: input.body, tagList: input.tagList ?? [],
        authorId: me.id, createdAt: now, updatedAt: now, favoritedBy: new Set()
      }
      articles.set(slug, article)
      return await reply.code(201).send({ article: articleOf(article, me) })
    })

  app.get<{ Params: { slug: string } }>('/api/articles/:slug', { onRequest: optionalAuth, schema: { response: respond(200, articleResponse) } }, async (request, reply) => {
    const a = articles.get(request.params.slug)
    if (a === undefined) {
      reply.code(404).send({ errors: { article: ['not found'] } })
      return
    }
    return { article: articleOf(a, viewer(request)) }
  })

  /** The article the path names and the caller, or the answer already sent. */
  const own = (request: FastifyRequest<{ Params: { slug: string } }>, reply: FastifyReply, mustAuthor: boolean): { a: Article, me: User } | null => {
    const a = articles.get(request.params.slug)
    const me = viewer(request)
    if (a === undefined || me === undefined) {
      reply.code(404).send({ errors: { article: ['not found'] } })
      return null
    }
    if (mustAuthor && a.authorId !== me.id) {
      reply.code(403).send({ errors: { article: ['is not yours'] } })
      return null
    }
    return { a, me }
  }

  app.put<{ Params: { slug: string }, Body: { article: { title?: string, description?: string, body?: string, tagList?: string[] } } }>('/api/articles/:slug',
    { onRequest: authenticate, schema: { body: articleBody, response: respond(200, articleResponse) } }, async (request, reply) => {
      const found = own(request, reply, true)
      if (found === null) return
      const { a, me } = found
      const { title, description, body, tagList } = request.body.article
      if (title !== undefined) a.title = title
      if (description !== undefined) a.description = description
      if (body !== undefined) a.body = body
      if (tagList !== undefined) a.tagList = tagList
      a.updatedAt = new Date().toISOString()
      return { article: articleOf(a, me) }
    })

  app.delete<{ Params: { slug: string } }>('/api/articles/:slug', { onRequest: authenticate }, async (request, reply) => {
    const found = own(request, reply, true)
    if (found === null) return
    articles.delete(found.a.slug)
    for (const [id, c] of comments) if (c.articleId === found.a.id) comments.delete(id)
    reply.code(204).send()
  })

  const favorite = (on: boolean) => async (request: FastifyRequest<{ Params: { slug: string } }>, reply: FastifyReply) => {
    const found = own(request, reply, false)
    if (found === null) return
    if (on) found.a.favoritedBy.add(found.me.id)
    else found.a.favoritedBy.delete(found.me.id)
    return { article: articleOf(found.a, found.me) }
  }
  app.post<{ Params: { slug: string } }>('/api/articles/:slug/favorite', { onRequest: authenticate, schema: { response: respond(200, articleResponse) } }, favorite(true))
  app.delete<{ Params: { slug: string } }>('/api/articles/:slug/favorite', { onRequest: authenticate, schema: { response: respond(200, articleResponse) } }, favorite(false))

  app.get<{ Params: { slug: string } }>('/api/articles/:slug/comments', { onRequest: optionalAuth, schema: { response: respond(200, { type: 'object', properties: { comments: { type: 'array', items: commentObject } } }) } },
    async (request, reply) => {
      const a = articles.get(request.params.slug)
      if (a === undefined) return await reply.code(404).send({ errors: { article: ['not found'] } })
      const me = viewer(request)
      return { comments: [...comments.values()].filter((c) => c.articleId === a.id).map((c) => commentOf(c, me)) }
    })

  app.post<{ Params: { slug: string }, Body: { comment: { id?: number, body: string } } }>('/api/articles/:slug/comments',
    { onRequest: authenticate, schema: { body: commentBody, response: respond(201, { type: 'object', properties: { comment: commentObject } }) } }, async (request, reply) => {
      const found = own(request, reply, false)
      if (found === null) return
      const wanted = request.body.comment.id
      const id = acceptClientIds && wanted !== undefined && !comments.has(wanted) ? wanted : next.comment++
      if (id >= next.comment) next.comment = id + 1
      const comment: Comment = { id, articleId: found.a.id, body: request.body.comment.body, authorId: found.me.id, createdAt: new Date().toISOString() }
      comments.set(id, comment)
      return await reply.code(201).send({ comment: commentOf(comment, found.me) })
    })

  app.delete<{ Params: { slug: string, id: string } }>('/api/articles/:slug/comments/:id', { onRequest: authenticate }, async (request, reply) => {
    const found = own(request, reply, false)
    if (found === null) return
    const c = comments.get(Number(request.params.id))
    if (c === undefined || c.articleId !== found.a.id) {
      reply.code(404).send({ errors: { comment: ['not found'] } })
      return
    }
    if (c.authorId !== found.me.id) {
      reply.code(403).send({ errors: { comment: ['is not yours'] } })
      return
    }
    comments.delete(c.id)
    reply.code(204).send()
  })

  app.get('/api/tags', async () => ({ tags: [...new Set([...articles.values()].flatMap((a) => a.tagList))].sort() }))

  return app
}
