#!/usr/bin/env bash
# npm run demo [-- --once] [-- --users N]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PATH:/usr/local/sbin:/usr/sbin"
exec node examples/dist/demo-main.js "$@"
