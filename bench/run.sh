#!/usr/bin/env bash
# Side-by-side benchmark of this broker and nats-server on loopback, with
# the same load shapes: hpfeeds bench drives hpfeeds, bench/natsbench drives
# NATS, bench/conns opens idle connections and connection storms on both.
# Prints one table; exits non-zero if any row lost a message.
#   bench/run.sh          full run (a few minutes)
#   bench/run.sh --smoke  tiny counts, every row type, for CI
set -euo pipefail
cd "$(dirname "$0")/.."
smoke=0
[ "${1:-}" = "--smoke" ] && smoke=1

if ! command -v nats-server >/dev/null; then
  apt-get update -qq && apt-get install -y -qq nats-server
fi
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

go build -o "$work/hpfeeds-broker" ./cmd/hpfeeds-broker
go build -o "$work/hpfeeds" ./cmd/hpfeeds
(cd bench && go build -o "$work/natsbench" ./natsbench && go build -o "$work/conns" ./conns)

freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
hp_port=$(freeport)
nats_port=$(freeport)
ulimit -n "$(ulimit -Hn)"

HPFEEDS_BENCH_SECRET=benchsecret HPFEEDS_BENCH_PUBCHANS=bench,bench.idle HPFEEDS_BENCH_SUBCHANS=bench,bench.idle \
  "$work/hpfeeds-broker" --auth=env -e "tcp:interface=127.0.0.1:port=$hp_port" --max-publish-size=2097152 2>"$work/broker.log" &
hp_pid=$!; pids+=("$hp_pid")
nats-server -a 127.0.0.1 -p "$nats_port" >"$work/nats.log" 2>&1 &
nats_pid=$!; pids+=("$nats_pid")
for port in "$hp_port" "$nats_port"; do
  for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
done

# scale N: the full count, or a tiny one with --smoke.
scale() { if [ "$smoke" = 1 ]; then echo "$2"; else echo "$1"; fi; }

results="$work/results.jsonl"
# measure PID CMD... : runs CMD and prints its JSON result with the CPU time
# (utime+stime, in clock ticks) broker PID used meanwhile and its peak RSS
# over the run (VmHWM, reset first through clear_refs).
measure() {
  local pid=$1; shift
  local t0 t1 out
  echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || true
  t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  out=$("$@" || true)
  t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  echo "{\"res\": ${out:-null}, \"cpu_ticks\": $((t1 - t0)), \"peak_rss_kib\": $(awk '/^VmHWM/{print $2}' "/proc/$pid/status")}"
}
row() { # row NAME ARGS... : one throughput/latency row on both brokers
  local name=$1; shift
  local hp nats
  hp=$(measure "$hp_pid" "$work/hpfeeds" bench --host 127.0.0.1 -p "$hp_port" -i bench -s benchsecret --json "$@")
  nats=$(measure "$nats_pid" "$work/natsbench" -url "nats://127.0.0.1:$nats_port" "$@")
  echo "{\"row\": \"$name\", \"hpfeeds\": $hp, \"nats\": $nats}" >>"$results"
}
conns() { # conns NAME N : idle connections and storm on both brokers
  local name=$1 n=$2 idle
  idle=$(scale 8s 1s)
  hp=$(measure "$hp_pid" "$work/conns" -addr "127.0.0.1:$hp_port" -pid "$hp_pid" -n "$n" -secret benchsecret -idle "$idle")
  nats=$(measure "$nats_pid" "$work/conns" -proto nats -addr "127.0.0.1:$nats_port" -pid "$nats_pid" -n "$n" -idle "$idle")
  echo "{\"row\": \"$name\", \"hpfeeds\": $hp, \"nats\": $nats}" >>"$results"
}

row "1→10, 256 B" --publishers 1 --subscribers 10 --size 256 --count "$(scale 1000000 2000)"
row "1→1, 256 B" --publishers 1 --subscribers 1 --size 256 --count "$(scale 3000000 2000)"
row "50→1, 256 B" --publishers 50 --subscribers 1 --size 256 --count "$(scale 40000 100)"
row "1→50, 1 KiB" --publishers 1 --subscribers 50 --size 1024 --count "$(scale 100000 200)"
row "1→2, 1 MiB" --publishers 1 --subscribers 2 --size 1048576 --count "$(scale 1000 10)"
# Unpaced: no window, publishers write as fast as TCP allows (a burst).
row "1→1, 256 B, unpaced" --window 0 --publishers 1 --subscribers 1 --size 256 --count "$(scale 1000000 2000)"
row "50→1, 256 B, unpaced" --window 0 --publishers 50 --subscribers 1 --size 256 --count "$(scale 16000 100)"
row "1→10, 256 B, unpaced" --window 0 --publishers 1 --subscribers 10 --size 256 --count "$(scale 300000 2000)"
row "latency 1→10 at 20,000/s" --publishers 1 --subscribers 10 --size 256 --rate 20000 --duration "$(scale 10s 1s)"
conns "idle connections" "$(scale 5000 200)"
# A fresh storm: the broker restarts so the idle row's connections are gone.
kill "$hp_pid" "$nats_pid"; wait "$hp_pid" "$nats_pid" 2>/dev/null || true
HPFEEDS_BENCH_SECRET=benchsecret HPFEEDS_BENCH_PUBCHANS=bench,bench.idle HPFEEDS_BENCH_SUBCHANS=bench,bench.idle \
  "$work/hpfeeds-broker" --auth=env -e "tcp:interface=127.0.0.1:port=$hp_port" --max-publish-size=2097152 2>>"$work/broker.log" &
hp_pid=$!; pids+=("$hp_pid")
nats-server -a 127.0.0.1 -p "$nats_port" >>"$work/nats.log" 2>&1 &
nats_pid=$!; pids+=("$nats_pid")
for port in "$hp_port" "$nats_port"; do
  for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
done
conns "connect storm" "$(scale 10000 300)"

# Two brokers joined through NATS: publisher on one, subscribers on the other.
hp_port2=$(freeport)
for port in "$hp_port" "$hp_port2"; do
  HPFEEDS_BENCH_SECRET=benchsecret HPFEEDS_BENCH_PUBCHANS=bench HPFEEDS_BENCH_SUBCHANS=bench \
    "$work/hpfeeds-broker" --auth=env -e "tcp:interface=127.0.0.1:port=$port" --cluster="nats://127.0.0.1:$nats_port" \
    2>>"$work/cluster.log" &
  pids+=("$!")
done
kill "$hp_pid"; wait "$hp_pid" 2>/dev/null || true
for port in "$hp_port" "$hp_port2"; do
  for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
done
hp=$("$work/hpfeeds" bench --host 127.0.0.1 -p "$hp_port" --sub-port "$hp_port2" -i bench -s benchsecret --json \
  --publishers 1 --subscribers 10 --size 256 --count "$(scale 300000 1000)" || true)
echo "{\"row\": \"1→10 across two brokers\", \"solo\": true, \"hpfeeds\": {\"res\": ${hp:-null}}, \"nats\": null}" >>"$results"

python3 - "$results" "$smoke" "$(getconf CLK_TCK)" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
smoke = sys.argv[2] == "1"
tck = float(sys.argv[3])
failed = False
def fmt(v, unit):
    if v is None: return "FAILED"
    if unit == "/s": return f"{v/1e6:.2f} M/s" if v >= 1e5 else f"{v:,.0f}/s"
    if unit == "us": return f"{v:,.0f} µs"
    if unit == "cpu": return f"{v:.2f} µs"
    if unit == "MiB": return f"{v:.1f} MiB"
    return f"{v:.2f} KiB"
def value(side, key):
    if side is None or side.get("res") is None: return None
    if key == "cpu_us_per_delivery":
        d = side["res"].get("delivered")
        return side["cpu_ticks"] / tck * 1e6 / d if d else None
    if key == "peak_rss_mib":
        return side["peak_rss_kib"] / 1024
    return side["res"].get(key)
print(f"{'row':28} {'measure':22} {'hpfeeds':>14} {'nats-server':>14} {'ahead':>7}")
for r in rows:
    h, n = r["hpfeeds"], r["nats"]
    if r["row"] == "idle connections":
        measures = [("RSS per connection", "rss_kib_per_conn", "KiB", False)]
    elif r["row"] == "connect storm":
        measures = [("connect+login+subscribe", "storm_per_s", "/s", True)]
    elif r["row"].startswith("latency"):
        measures = [("p99 latency", "latency_p99_us", "us", False), ("p50 latency", "latency_p50_us", "us", False)]
    else:
        measures = [("deliveries", "delivered_per_s", "/s", True)]
        if r["row"].startswith("50→1") and "unpaced" in r["row"]:
            measures.append(("p99 latency", "latency_p99_us", "us", False))
    if not r.get("solo") and r["row"] not in ("idle connections", "connect storm"):
        measures += [("CPU per delivery", "cpu_us_per_delivery", "cpu", False), ("peak RSS", "peak_rss_mib", "MiB", False)]
    for label, key, unit, higher in measures:
        hv, nv = value(h, key), value(n, key)
        if smoke and key in ("rss_kib_per_conn", "cpu_us_per_delivery"):
            # Tiny counts: within the noise of the heap and of the clock tick.
            print(f"{r['row']:28} {label:22} {'(smoke)':>14} {'(smoke)':>14} {'-':>7}")
            continue
        # ratio > 1 means hpfeeds is ahead, whichever way the measure goes.
        ratio = f"{(hv/nv if higher else nv/hv):.2f}x" if hv and nv and hv > 0 else "-"
        nvs = "-" if r.get("solo") else fmt(nv, unit)
        print(f"{r['row']:28} {label:22} {fmt(hv, unit):>14} {nvs:>14} {ratio:>7}")
    for side, res in (("hpfeeds", h and h.get("res")), ("nats-server", n and n.get("res"))):
        if res is None and side == "nats-server" and r.get("solo"):
            continue
        if res is None:
            print(f"  FAILED: {side} produced no result"); failed = True
        elif res.get("lost") or res.get("failed"):
            print(f"  FAILED: {side} lost {res.get('lost') or res.get('failed')}"); failed = True
sys.exit(1 if failed else 0)
PY
