#!/usr/bin/env bash
# The scrapers of docs/reliability.md: 5,000 idle subscribed connections,
# a healthy publisher/subscriber pair at 200 messages a second, and 32
# clients looping over /connz?limit=1000000, /, /identz and /chanz; prints
# the pair's latency, the broker's CPU and peak RSS without the scrapers,
# then with them. BROKER=path runs another build of the broker; SOURCES=32
# has each scraper come from its own loopback address.
#   bench/scrape.sh [PHASE]    (default 15s a phase)
set -euo pipefail
cd "$(dirname "$0")/.."
phase=${1:-15s}
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
broker=${BROKER:-}
if [ -z "$broker" ]; then
  go build -o "$work/hpfeeds-broker" ./cmd/hpfeeds-broker
  broker=$work/hpfeeds-broker
fi
(cd bench && go build -o "$work/scrape" ./scrape)
free() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free) exporter=$(free)
ulimit -n "$(ulimit -Hn)"
HPFEEDS_BENCH_SECRET=benchsecret HPFEEDS_BENCH_PUBCHANS=h,bench.idle HPFEEDS_BENCH_SUBCHANS=h,bench.idle \
  "$broker" --auth=env -e "tcp:interface=127.0.0.1:port=$port" --exporter="127.0.0.1:$exporter" \
  --max-connections=0 --log-level=warn 2>"$work/broker.log" &
pid=$!
for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$exporter") 2>/dev/null && break; sleep 0.05; done
"$work/scrape" -addr "127.0.0.1:$port" -exporter "127.0.0.1:$exporter" -pid "$pid" -phase "$phase" -sources "${SOURCES:-1}"
