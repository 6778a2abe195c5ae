#!/usr/bin/env bash
# npm test [-- vitest args]: builds, type-checks the tests, runs them against real nats-servers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PATH:/usr/local/sbin:/usr/sbin"
npx --no-install tsc -p test --noEmit
exec npx --no-install vitest run "$@"
