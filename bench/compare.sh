#!/usr/bin/env bash
# Compares hpfeeds-broker builds row by row, alternating, so that whatever
# else the machine does weighs on each build alike: every build runs as its
# own broker, and each row runs on each broker in turn, ROUNDS times.
# Prints one line per run: the row, the build, the broker's CPU per
# delivery (utime+stime from /proc over delivered messages), its peak RSS
# over the row (VmHWM, reset before it), the peak of its anonymous part
# (RssAnon, read every 20 ms) and deliveries per second. Each binary runs
# from a fresh copy: the same bytes have shown resident file pages 6 MiB
# apart depending on the history of their page cache.
#   bench/compare.sh ROUNDS BROKER_BINARY...
# e.g. after `git worktree add --detach /tmp/old 1b38a85` and building
# /tmp/old's and this tree's cmd/hpfeeds-broker:
#   bench/compare.sh 3 /tmp/broker-old /tmp/broker-new
# ROWS, a regular expression, picks the rows run: ROWS='50→1' bench/compare.sh …
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=$1; shift
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$work"' EXIT
go build -o "$work/hpfeeds" ./cmd/hpfeeds
export HPFEEDS_BENCH_SECRET=benchsecret HPFEEDS_BENCH_PUBCHANS=bench HPFEEDS_BENCH_SUBCHANS=bench
ports=()
for i in $(seq "$#"); do
  b="$work/broker$i"
  cp "${!i}" "$b"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$b" --auth=env --max-publish-size=2097152 -e "tcp:interface=127.0.0.1:port=$port" 2>/dev/null &
  pids+=($!); ports+=("$port")
done
sleep 1
rows=("paced 1→1|--publishers 1 --subscribers 1 --size 256 --count 1500000"
  "unpaced 1→1|--window 0 --publishers 1 --subscribers 1 --size 256 --count 1000000"
  "paced 50→1|--publishers 50 --subscribers 1 --size 256 --count 30000"
  "unpaced 50→1|--window 0 --publishers 50 --subscribers 1 --size 256 --count 16000"
  "paced 1→10|--publishers 1 --subscribers 10 --size 256 --count 500000"
  "unpaced 1→10|--window 0 --publishers 1 --subscribers 10 --size 256 --count 300000"
  "paced 1→50, 1 KiB|--publishers 1 --subscribers 50 --size 1024 --count 50000"
  "paced 1→2, 1 MiB|--publishers 1 --subscribers 2 --size 1048576 --count 500"
  "steady 1→10 at 20,000/s|--publishers 1 --subscribers 10 --size 256 --rate 20000 --duration 5s")
for _ in $(seq "$rounds"); do
  for row in "${rows[@]}"; do
    name=${row%%|*}; args=${row#*|}
    [[ $name =~ ${ROWS:-.} ]] || continue
    for i in "${!pids[@]}"; do
      pid=${pids[$i]}
      echo 5 >"/proc/$pid/clear_refs"
      t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
      rm -f "$work/stop"
      (peak=0; until [ -e "$work/stop" ]; do
        a=$(awk '/^RssAnon/{print $2}' "/proc/$pid/status"); [ "$a" -gt "$peak" ] && peak=$a; sleep 0.02
      done; echo "$peak" >"$work/anon") &
      sampler=$!
      # shellcheck disable=SC2086 # args are words
      out=$("$work/hpfeeds" bench --host 127.0.0.1 -p "${ports[$i]}" -i bench -s benchsecret --json $args)
      t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
      touch "$work/stop"; wait "$sampler"
      python3 - "$name" "${*:$((i + 1)):1}" "$((t1 - t0))" "$(awk '/^VmHWM/{print $2}' "/proc/$pid/status")" "$out" "$(cat "$work/anon")" <<'PY'
import json, os, sys
name, build, ticks, hwm, out, anon = sys.argv[1:]
r = json.loads(out)
us = int(ticks) / os.sysconf("SC_CLK_TCK") * 1e6 / r["delivered"]
print(f"{name:18} {build:28} {us:8.3f} µs/delivery {int(hwm) / 1024:6.1f} MiB (anon {int(anon) / 1024:5.1f}) {r['delivered_per_s']:12,.0f}/s lost {r['lost']}")
PY
    done
  done
done
