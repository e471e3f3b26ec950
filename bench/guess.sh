#!/usr/bin/env bash
# The parallel password guessing of docs/reliability.md: for each number of
# guessing connections (64 and 192, or the arguments), a fresh broker with
# the default login throttling, a guesser from 127.0.0.2 for 20 s, and a
# good sensor logging in from the same address once a second.
#   bench/guess.sh [CONNS...]
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
go build -o "$work/hpfeeds-broker" ./cmd/hpfeeds-broker
(cd bench && go build -o "$work/guess" ./guess)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
for conns in ${@:-64 192}; do
  HPFEEDS_SENSOR_SECRET=a-long-secret HPFEEDS_SENSOR_PUBCHANS=x HPFEEDS_SENSOR_SUBCHANS=x \
  HPFEEDS_GOOD_SECRET=goodsecret HPFEEDS_GOOD_PUBCHANS=x HPFEEDS_GOOD_SUBCHANS=x \
    "$work/hpfeeds-broker" --auth=env -e "tcp:interface=127.0.0.1:port=$port" \
    --exporter="127.0.0.1:$mport" 2>"$work/broker.log" &
  pid=$!
  for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
  "$work/guess" -addr "127.0.0.1:$port" -metrics "http://127.0.0.1:$mport/metrics" -pid "$pid" -conns "$conns"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
done
