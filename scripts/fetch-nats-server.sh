#!/usr/bin/env bash
# Fetches a current nats-server from Debian's archive into .tools/ (git-ignored) without touching
# the system's apt sources: a private apt state whose one source is derived from the system's own
# Debian mirror, `apt-get download`, then `dpkg-deb -x`. Prints the binary's path.
#   bash scripts/fetch-nats-server.sh [SUITE]     SUITE: sid (default, 2.15.x) or trixie (2.10.x)
set -euo pipefail
cd "$(dirname "$0")/.."
suite="${1:-sid}"
dest=".tools/nats-server-$suite"
if [ -x "$dest/usr/bin/nats-server" ]; then echo "$PWD/$dest/usr/bin/nats-server"; exit 0; fi
if [ -x "$dest/usr/sbin/nats-server" ]; then echo "$PWD/$dest/usr/sbin/nats-server"; exit 0; fi

# The mirror the system already uses (deb822 or one-line format), else Debian's own.
mirror=$(sed -nE 's#^URIs:[[:space:]]*(https?://[^[:space:]]*/debian)/?[[:space:]]*$#\1#p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 || true)
[ -n "$mirror" ] || mirror=$(sed -nE 's#^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?(https?://[^[:space:]]*/debian)/?[[:space:]].*#\2#p' /etc/apt/sources.list 2>/dev/null | head -1 || true)
[ -n "$mirror" ] || mirror="http://deb.debian.org/debian"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

state=$(mktemp -d)
trap 'rm -rf "$state"' EXIT
mkdir -p "$state/lists/partial" "$state/cache/archives/partial" "$state/etc/preferences.d" "$state/etc/sources.list.d"
echo "deb [signed-by=$keyring] $mirror $suite main" > "$state/etc/sources.list"
opts=(-o Dir::Etc::sourcelist="$state/etc/sources.list" -o Dir::Etc::sourceparts="$state/etc/sources.list.d"
      -o Dir::Etc::preferencesparts="$state/etc/preferences.d" -o Dir::State::lists="$state/lists"
      -o Dir::Cache="$state/cache" -o Dir::State::status=/dev/null -o Debug::NoLocking=1 -o APT::Sandbox::User=root -o APT::Get::List-Cleanup=0)
apt-get "${opts[@]}" update -qq >/dev/null
( cd "$state" && apt-get "${opts[@]}" download -qq nats-server >/dev/null )
mkdir -p "$dest"
dpkg-deb -x "$state"/nats-server_*.deb "$dest"
bin=$(find "$PWD/$dest" -type f -name nats-server -perm -u+x | head -1)
[ -n "$bin" ] || { echo "no nats-server binary in the $suite package" >&2; exit 1; }
echo "$bin"
