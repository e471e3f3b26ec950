#!/usr/bin/env bash
# The memory attacks of docs/performance.md against a broker with
# --memory-limit=192MiB (or $1): each on a fresh broker, printing its peak
# RSS and what a healthy subscriber beside the attack lost.
#   bench/attack.sh [LIMIT]
set -euo pipefail
cd "$(dirname "$0")/.."
limit=${1:-192MiB}
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
go build -o "$work/hpfeeds-broker" ./cmd/hpfeeds-broker
# A fresh copy, as bench/run.sh does: its peak RSS then does not depend on
# the history of the linker's output in the page cache.
cp "$work/hpfeeds-broker" "$work/copy" && mv "$work/copy" "$work/hpfeeds-broker"
(cd bench && go build -o "$work/attack" ./attack)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
for attack in partial subscribe stalled; do
  HPFEEDS_BENCH_SECRET=benchsecret HPFEEDS_BENCH_PUBCHANS=h,c0,c1,c2,c3,c4,c5,c6,c7 HPFEEDS_BENCH_SUBCHANS=h,c0,c1,c2,c3,c4,c5,c6,c7 \
    "$work/hpfeeds-broker" --auth=env -e "tcp:interface=127.0.0.1:port=$port" --memory-limit="$limit" \
    --max-publish-size=10485760 2>"$work/broker.log" &
  pid=$!
  for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
  "$work/attack" -addr "127.0.0.1:$port" -pid "$pid" -attack "$attack"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
done
