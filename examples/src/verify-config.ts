/**
 * The `regionsync verify` config of the example identity API: users paged by marker (Keystone's
 * way), projects by following `links.next`; both repairable by a PUT of the source's
 * representation or a DELETE. examples/verify.json is this config for the docker-compose regions;
 * the demo and the tests build it for their own URLs.
 */
export function identityVerifyConfig (source: string, regions: Record<string, { url: string, tokenEnv?: string }>): Record<string, unknown> {
  return {
    source,
    regions,
    maxRps: 200,
    concurrency: 4,
    pageSize: 500,
    types: [
      {
        name: 'users',
        collection: '/v3/users',
        items: 'users',
        id: 'id',
        paging: { kind: 'cursor', param: 'marker', limitParam: 'limit', next: '$lastId' },
        item: { path: '/v3/users/{id}', field: 'user' },
        ignore: [],
        resourceKey: '/v3/users/{id}',
        repair: { put: { path: '/v3/users/{id}', wrap: 'user', omit: ['id'] }, delete: { path: '/v3/users/{id}' } }
      },
      {
        name: 'projects',
        collection: '/v3/projects',
        items: 'projects',
        id: 'id',
        paging: { kind: 'link', limitParam: 'limit', next: 'links.next' },
        item: { path: '/v3/projects/{id}', field: 'project' },
        resourceKey: '/v3/projects/{id}',
        repair: { put: { path: '/v3/projects/{id}', wrap: 'project', omit: ['id'] }, delete: { path: '/v3/projects/{id}' } }
      }
    ]
  }
}
