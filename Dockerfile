# One image for both halves of regionsync:
#   - the `regionsync` command (default):   docker run IMAGE replicate --region eu --target http://...
#   - the example API with the plugin on:   docker run --entrypoint node IMAGE examples/dist/server.js
# docker-compose.yml runs both from this file.

ARG NODE_IMAGE=node:20-bookworm-slim

# ---------------------------------------------------------------------------
# build: install every dependency, compile all workspaces, then drop dev deps
# ---------------------------------------------------------------------------
FROM ${NODE_IMAGE} AS build
WORKDIR /app

# Manifests first, so the dependency layer is cached until they change.
COPY package.json package-lock.json ./
COPY shared/package.json shared/
COPY services/publisher/package.json services/publisher/
COPY services/replicator/package.json services/replicator/
COPY examples/package.json examples/
# A workspace of the repo (it pins Fastify 4 for the tests); npm ci needs its manifest.
COPY test/fastify4/package.json test/fastify4/
RUN npm ci --no-audit --no-fund

# Sources and build configuration.
COPY tsconfig*.json ./
COPY shared/tsconfig.json shared/
COPY shared/src shared/src
COPY services/publisher/tsconfig.json services/publisher/
COPY services/publisher/src services/publisher/src
COPY services/replicator/tsconfig.json services/replicator/
COPY services/replicator/src services/replicator/src
COPY services/replicator/bin services/replicator/bin
COPY examples/tsconfig.json examples/
COPY examples/src examples/src
# The example API's verify config, which the compose `verify` service runs.
COPY examples/verify.json examples/

# Only the shipped workspaces: the root tsconfig also references bench/, which the image does not carry.
RUN npx tsc -b shared services/publisher services/replicator examples \
 && test -f services/replicator/dist/cli.js \
 && test -f examples/dist/server.js \
 && npm prune --omit=dev --no-audit --no-fund \
 && npm cache clean --force

# ---------------------------------------------------------------------------
# runtime: the pruned /app tree as is (node_modules/@regionsync/* are symlinks
# into the workspace folders, so the whole tree is copied, not single folders)
# ---------------------------------------------------------------------------
FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production
WORKDIR /app

# Files stay owned by root (read-only for the app); only the data dir is writable.
COPY --from=build /app /app
# The spool directory exists, owned by node, so a named volume mounted there starts writable.
RUN mkdir -p /app/.data/spool && chown -R node:node /app/.data

USER node

# 3000: example API; 9464: replicator /metrics, /status, /healthz, /readyz; 9465: verify --every /metrics
EXPOSE 3000 9464 9465

ENTRYPOINT ["node", "services/replicator/bin/regionsync.js"]
CMD ["--help"]
