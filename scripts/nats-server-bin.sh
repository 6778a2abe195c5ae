# Sourced by the test and bench scripts: exports NATS_SERVER_BIN, the nats-server the tests and the
# bench start. Unless the caller set it (CI's second pass sets Debian's own 2.9.10), it is the
# current server (Debian sid, 2.15.x) that scripts/fetch-nats-server.sh keeps in .tools/; when that
# cannot be fetched (offline, no Debian archive) it falls back to PATH's nats-server, saying so.
if [ -z "${NATS_SERVER_BIN:-}" ]; then
  if NATS_SERVER_BIN=$(timeout 180 bash scripts/fetch-nats-server.sh sid 2>/dev/null) && [ -x "$NATS_SERVER_BIN" ]; then
    export NATS_SERVER_BIN
  else
    NATS_SERVER_BIN=$(command -v nats-server || echo nats-server)
    export NATS_SERVER_BIN
    echo "could not fetch the current nats-server (bash scripts/fetch-nats-server.sh; offline?): using $NATS_SERVER_BIN from PATH" >&2
  fi
fi
echo "nats-server: $NATS_SERVER_BIN ($("$NATS_SERVER_BIN" --version 2>/dev/null | sed "s/^nats-server: //" || true))" >&2
