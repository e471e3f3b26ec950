#!/usr/bin/env bash
# Soak run: minutes of mixed load on the broker, with reconnect storms,
# garbage connections and credential-database outages. Not part of make test.
#   bench/soak.sh                      5 minutes with the defaults
#   bench/soak.sh -duration 30m -rate 20000
# Needs the machine's PostgreSQL (see README). Exits non-zero if a healthy
# subscriber lost a message. Flags: go run ./bench/soak -h
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
go build -o "$work/hpfeeds-broker" ./cmd/hpfeeds-broker
(cd bench && go build -o "$work/soak" ./soak)
ulimit -n "$(ulimit -Hn)"
"$work/soak" -broker "$work/hpfeeds-broker" "$@"
