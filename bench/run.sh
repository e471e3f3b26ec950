#!/usr/bin/env bash
# Side-by-side benchmark of this broker and nats-server on loopback, with
# the same load shapes: hpfeeds bench drives hpfeeds, bench/natsbench drives
# NATS, bench/conns opens idle connections and connection storms on both.
# Every delivery row also runs against bench/nullrelay, the floor: an
# hpfeeds relay that only copies frames. Retained rows put this broker
# with --retain beside nats-server's JetStream (a file-backed stream and
# durable consumers); they run on this broker only when its --help lists
# --retain, as does the catch-up row (bench/catchup).
# Prints one table; exits non-zero if any row lost a message.
#   bench/run.sh          full run (several minutes)
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
(cd bench && for cmd in natsbench conns nullrelay catchup; do go build -o "$work/$cmd" "./$cmd"; done)
# The measured servers run from fresh copies: the same bytes have shown
# resident file pages (in peak RSS) 6.5 MiB apart depending on the history
# of their page cache; a copy starts them alike, as an installed binary.
for cmd in hpfeeds-broker nullrelay; do cp "$work/$cmd" "$work/$cmd.copy" && mv "$work/$cmd.copy" "$work/$cmd"; done

freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
waitport() { # waitport PORT : wait up to 10 s for a listener, or fail the run
  for _ in $(seq 200); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "FAILED: nothing listens on port $1 after 10 s:" >&2; tail -n 3 "$work"/*.log >&2; return 1
}
hp_port=$(freeport)
nats_port=$(freeport)
js_port=$(freeport)
relay_port=$(freeport)
ret_port=$(freeport)
plain_port=$(freeport)
ulimit -n "$(ulimit -Hn)"

export HPFEEDS_BENCH_SECRET=benchsecret HPFEEDS_BENCH_PUBCHANS=bench,bench.idle HPFEEDS_BENCH_SUBCHANS=bench,bench.idle
"$work/hpfeeds-broker" --auth=env -e "tcp:interface=127.0.0.1:port=$hp_port" --max-publish-size=2097152 2>"$work/broker.log" &
hp_pid=$!; pids+=("$hp_pid")
nats-server -a 127.0.0.1 -p "$nats_port" >"$work/nats.log" 2>&1 &
nats_pid=$!; pids+=("$nats_pid")
# JetStream on a server of its own, so the core rows' server stays as it was.
nats-server -a 127.0.0.1 -p "$js_port" -js -sd "$work/jetstream" >"$work/js.log" 2>&1 &
js_pid=$!; pids+=("$js_pid")
"$work/nullrelay" -addr "127.0.0.1:$relay_port" >/dev/null 2>"$work/relay.log" &
relay_pid=$!; pids+=("$relay_pid")
for port in "$hp_port" "$nats_port" "$js_port" "$relay_port"; do waitport "$port"; done

# Retention rows need a broker with --retain; an older one skips them, and
# says so. When the flag exists, any failure of those rows fails the run.
help=$("$work/hpfeeds-broker" --help 2>&1)
retain=0
if grep -qE -- '--retain([= ]|$)' <<<"$help"; then
  retain=1
else
  echo "skipped: this broker has no --retain (the retained rows' hpfeeds column and the catch-up row)"
fi
ret_pid=
# start_retain: a fresh broker with --retain=bench on an empty --retain-dir,
# so no row inherits another's history or resume positions.
start_retain() {
  if [ -n "$ret_pid" ]; then kill "$ret_pid"; wait "$ret_pid" 2>/dev/null || true; fi
  rm -rf "$work/retain"
  HPFEEDS_CATCHUP_SECRET=benchsecret HPFEEDS_CATCHUP_SUBCHANS=bench \
    "$work/hpfeeds-broker" --auth=env -e "tcp:interface=127.0.0.1:port=$ret_port" \
    --retain=bench --retain-dir="$work/retain" 2>>"$work/retain.log" &
  ret_pid=$!; pids+=("$ret_pid")
  if ! waitport "$ret_port"; then
    echo "FAILED: hpfeeds-broker --retain did not start:"; tail -5 "$work/retain.log"; exit 1
  fi
}

# run_plain ARGS... : the same load twice on a fresh broker without
# --retain, as start_retain's broker gets it: what --retain adds on a
# fresh broker is measured against a fresh broker, which also grows into
# its memory on its first run, as the long-lived core broker does not.
# Prints the two results, comma-separated.
run_plain() {
  "$work/hpfeeds-broker" --auth=env -e "tcp:interface=127.0.0.1:port=$plain_port" 2>>"$work/plain.log" &
  local pid=$! first warm
  pids+=("$pid")
  waitport "$plain_port"
  first=$(measure "$pid" hpbench "$plain_port" "$@")
  warm=$(measure "$pid" hpbench "$plain_port" "$@")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$first, $warm"
}

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
hpbench() { # hpbench PORT ARGS... : hpfeeds bench against the broker on PORT
  local port=$1; shift
  "$work/hpfeeds" bench --host 127.0.0.1 -p "$port" -i bench -s benchsecret --json "$@"
}
# A row runs ROUNDS times (BENCH_ROUNDS, 3 unless set; 1 with --smoke),
# alternating the two brokers and the floor, and the table shows each
# measure's median: one run of a short row varies by a fifth on this kind
# of shared machine, enough to move a row across the floor.
rounds=$(scale "${BENCH_ROUNDS:-3}" 1)
row() { # row NAME ARGS... : one throughput/latency row on both brokers and the floor
  local name=$1; shift
  local hp=() nats=() floor=()
  for _ in $(seq "$rounds"); do
    hp+=("$(measure "$hp_pid" hpbench "$hp_port" "$@")")
    nats+=("$(measure "$nats_pid" "$work/natsbench" -url "nats://127.0.0.1:$nats_port" "$@")")
    floor+=("$(measure "$relay_pid" hpbench "$relay_port" "$@")")
  done
  local IFS=,
  echo "{\"row\": \"$name\", \"hpfeeds\": [${hp[*]}], \"nats\": [${nats[*]}], \"floor\": [${floor[*]}]}" >>"$results"
}
retained() { # retained NAME ARGS... : the same with --retain against JetStream
  local name=$1; shift
  local hp='{"skipped": "this broker has no --retain"}' warm=null plain=null nats floor
  if [ "$retain" = 1 ]; then
    plain="[$(run_plain "$@")]"
    start_retain
    hp=$(measure "$ret_pid" hpbench "$ret_port" "$@")
    # The same load again on the same broker: the first run also pays for
    # what a fresh broker does once (the stream's files, JetStream's
    # buffers, the heap growing), as the core rows' long-lived broker
    # does not; the second is the cost per message from then on.
    warm=$(measure "$ret_pid" hpbench "$ret_port" "$@")
  fi
  nats=$(measure "$js_pid" "$work/natsbench" -jetstream -url "nats://127.0.0.1:$js_port" "$@")
  floor=$(measure "$relay_pid" hpbench "$relay_port" "$@")
  echo "{\"row\": \"$name\", \"retained\": true, \"hpfeeds\": $hp, \"warm\": $warm, \"plain\": $plain, \"nats\": $nats, \"floor\": $floor}" >>"$results"
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
retained "1→1, 256 B, retained" --publishers 1 --subscribers 1 --size 256 --count "$(scale 200000 2000)"
row "50→1, 256 B" --publishers 50 --subscribers 1 --size 256 --count "$(scale 40000 100)"
retained "50→1, 256 B, retained" --publishers 50 --subscribers 1 --size 256 --count "$(scale 4000 100)"
row "1→50, 1 KiB" --publishers 1 --subscribers 50 --size 1024 --count "$(scale 100000 200)"
row "1→2, 1 MiB" --publishers 1 --subscribers 2 --size 1048576 --count "$(scale 1000 10)"
# Unpaced: no window, publishers write as fast as TCP allows (a burst).
row "1→1, 256 B, unpaced" --window 0 --publishers 1 --subscribers 1 --size 256 --count "$(scale 1000000 2000)"
retained "1→1, 256 B, unpaced, retained" --window 0 --publishers 1 --subscribers 1 --size 256 --count "$(scale 200000 2000)"
row "50→1, 256 B, unpaced" --window 0 --publishers 50 --subscribers 1 --size 256 --count "$(scale 16000 100)"
retained "50→1, 256 B, unpaced, retained" --window 0 --publishers 50 --subscribers 1 --size 256 --count "$(scale 4000 100)"
row "1→10, 256 B, unpaced" --window 0 --publishers 1 --subscribers 10 --size 256 --count "$(scale 300000 2000)"
row "latency 1→10 at 20,000/s" --publishers 1 --subscribers 10 --size 256 --rate 20000 --duration "$(scale 5s 1s)"
# Catch-up: a subscriber ident misses N messages and reconnects while live
# traffic flows to another subscriber (bench/catchup).
# Rounds as for the delivery rows, each hpfeeds one on a fresh broker: the
# replay lasts under a second, so its live p99 rests on a dozen samples and
# one run of it says little.
hp=() nats=()
for _ in $(seq "$rounds"); do
  if [ "$retain" = 1 ]; then
    start_retain
    hp+=("$(measure "$ret_pid" "$work/catchup" -addr "127.0.0.1:$ret_port" -channel bench -secret benchsecret \
      -catchup-secret benchsecret -n "$(scale 200000 1000)" -rate 2000 -baseline "$(scale 2s 300ms)")")
  fi
  # The anchor: the same shape on nats-server's JetStream (a stream on the
  # subject, a durable consumer catching up, a core NATS live subscriber).
  nats+=("$(measure "$js_pid" "$work/catchup" -proto nats -addr "127.0.0.1:$js_port" -channel catchup.bench \
    -n "$(scale 200000 1000)" -rate 2000 -baseline "$(scale 2s 300ms)")")
done
hpj=$(IFS=,; echo "[${hp[*]}]") natsj=$(IFS=,; echo "[${nats[*]}]")
[ "$retain" = 1 ] || hpj='{"skipped": "this broker has no --retain"}'
echo "{\"row\": \"catch-up\", \"hpfeeds\": $hpj, \"nats\": $natsj}" >>"$results"
if [ -n "$ret_pid" ]; then kill "$ret_pid"; wait "$ret_pid" 2>/dev/null || true; fi
conns "idle connections" "$(scale 5000 200)"
# A fresh storm: the broker restarts so the idle row's connections are gone.
kill "$hp_pid" "$nats_pid"; wait "$hp_pid" "$nats_pid" 2>/dev/null || true
"$work/hpfeeds-broker" --auth=env -e "tcp:interface=127.0.0.1:port=$hp_port" --max-publish-size=2097152 2>>"$work/broker.log" &
hp_pid=$!; pids+=("$hp_pid")
nats-server -a 127.0.0.1 -p "$nats_port" >>"$work/nats.log" 2>&1 &
nats_pid=$!; pids+=("$nats_pid")
for port in "$hp_port" "$nats_port"; do waitport "$port"; done
conns "connect storm" "$(scale 10000 300)"

# Two brokers joined through NATS: publisher on one, subscribers on the other.
# The single broker goes first: the first cluster broker takes its port.
kill "$hp_pid"; wait "$hp_pid" 2>/dev/null || true
hp_port2=$(freeport)
for port in "$hp_port" "$hp_port2"; do
  HPFEEDS_BENCH_SECRET=benchsecret HPFEEDS_BENCH_PUBCHANS=bench HPFEEDS_BENCH_SUBCHANS=bench \
    "$work/hpfeeds-broker" --auth=env -e "tcp:interface=127.0.0.1:port=$port" --cluster="nats://127.0.0.1:$nats_port" \
    2>>"$work/cluster.log" &
  pids+=("$!")
done
for port in "$hp_port" "$hp_port2"; do waitport "$port"; done
hp=$("$work/hpfeeds" bench --host 127.0.0.1 -p "$hp_port" --sub-port "$hp_port2" -i bench -s benchsecret --json \
  --publishers 1 --subscribers 10 --size 256 --count "$(scale 300000 1000)" || true)
echo "{\"row\": \"1→10 across two brokers\", \"solo\": true, \"hpfeeds\": {\"res\": ${hp:-null}}, \"nats\": null}" >>"$results"

python3 - "$results" "$smoke" "$(getconf CLK_TCK)" <<'PY'
import json, statistics, sys
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
    if unit == "n": return f"{v:,.0f}"
    return f"{v:.2f} KiB"
def runs(side):
    """A side's runs: a row's rounds are a list, other rows one run."""
    return side if isinstance(side, list) else [side]
def value(side, key):
    if isinstance(side, list):
        vs = [value(s, key) for s in side]
        return None if not vs or None in vs else statistics.median(vs)
    if side is None or side.get("res") is None: return None
    if key == "cpu_us_per_delivery":
        d = side["res"].get("delivered")
        return side["cpu_ticks"] / tck * 1e6 / d if d else None
    if key == "peak_rss_mib":
        return side["peak_rss_kib"] / 1024
    return side["res"].get(key)
def measures(r):
    name = r["row"]
    if name == "idle connections":
        return [("RSS per connection", "rss_kib_per_conn", "KiB", False)]
    if name == "connect storm":
        return [("connect+login+subscribe", "storm_per_s", "/s", True)]
    if name == "catch-up":
        return [("replayed", "replayed_per_s", "/s", True), ("live p99 before", "live_p99_us_before", "us", False),
                ("live p99 during", "live_p99_us", "us", False),
                ("live p99 during, sock", "live_sock_p99_us", "us", False), ("duplicates", "duplicates", "n", False),
                ("peak RSS", "peak_rss_mib", "MiB", False)]
    if name.startswith("latency"):
        m = [("p99 latency", "latency_p99_us", "us", False), ("p50 latency", "latency_p50_us", "us", False)]
    else:
        m = [("deliveries", "delivered_per_s", "/s", True)]
        if name.startswith("50→1") and "unpaced" in name:
            m.append(("p99 latency", "latency_p99_us", "us", False))
    if not r.get("solo"):
        m += [("CPU per delivery", "cpu_us_per_delivery", "cpu", False), ("peak RSS", "peak_rss_mib", "MiB", False)]
    return m
by_name = {r["row"]: r for r in rows}
print("retained rows: hpfeeds with --retain=bench against nats-server JetStream (file-backed stream, durable consumer);")
print("null relay: bench/nullrelay, the floor; × floor: hpfeeds CPU per delivery / the relay's")
rounds = max(len(r["hpfeeds"]) for r in rows if isinstance(r["hpfeeds"], list))
print((f"delivery rows: the median of {rounds} rounds, each running hpfeeds, nats-server and the null relay in turn;"
       if rounds > 1 else "delivery rows: one run each;") + " catch-up: the same, each hpfeeds round on a fresh broker;"
      + " retained rows: one run on a fresh broker, then one warm, each set against"
      + " a fresh broker without --retain run the same way")
print(f"{'row':32} {'measure':22} {'hpfeeds':>14} {'nats-server':>14} {'ahead':>7} {'null relay':>12} {'× floor':>8}")
for r in rows:
    h, n, f = r["hpfeeds"], r["nats"], r.get("floor")
    skipped = h.get("skipped") if isinstance(h, dict) else None
    if skipped and r.get("solo"):
        print(f"{r['row']:32} {'every measure':22} {'skipped':>14}")
    for label, key, unit, higher in ([] if skipped and r.get("solo") else measures(r)):
        hv, nv, fv = value(h, key), value(n, key), value(f, key)
        if smoke and key in ("rss_kib_per_conn", "cpu_us_per_delivery"):
            # Tiny counts: within the noise of the heap and of the clock tick.
            fvs = "-" if f is None else "(smoke)"
            print(f"{r['row']:32} {label:22} {'(smoke)':>14} {'(smoke)':>14} {'-':>7} {fvs:>12} {'-':>8}")
            continue
        # ratio > 1 means hpfeeds is ahead, whichever way the measure goes.
        ratio = f"{(hv/nv if higher else nv/hv):.2f}x" if hv and nv and hv > 0 else "-"
        hvs = "skipped" if skipped else fmt(hv, unit)
        # The live subscriber's socket times are read for hpfeeds only.
        nvs = "-" if r.get("solo") or key == "live_sock_p99_us" else fmt(nv, unit)
        fvs = "-" if f is None else fmt(fv, unit)
        floor = f"{hv/fv:.2f}x" if key == "cpu_us_per_delivery" and hv and fv else "-"
        print(f"{r['row']:32} {label:22} {hvs:>14} {nvs:>14} {ratio:>7} {fvs:>12} {floor:>8}")
    off = by_name.get(r["row"].replace(", retained", "")) if r.get("retained") else None
    plain = r.get("plain") or [None, None]
    if off and not skipped and not smoke:
        # First on a fresh broker, then the same load again on it (warm),
        # each against a fresh broker without --retain run the same way;
        # the last line sets the first run against the core row's broker,
        # long-lived, as earlier tables did.
        ov = value(off["hpfeeds"], "cpu_us_per_delivery")
        for label, side, base in (("CPU added by --retain", h, value(plain[0], "cpu_us_per_delivery")),
                                  ("CPU added, warm", r.get("warm"), value(plain[1], "cpu_us_per_delivery")),
                                  ("added vs long-lived", h, ov)):
            hv = value(side, "cpu_us_per_delivery")
            added = f"{hv - base:+.2f} µs" if hv and base else "-"
            print(f"{r['row']:32} {label:22} {added:>14}")
    for w in [p for p in plain if p is not None]:
        if w.get("res") is None or w["res"].get("lost"):
            print(f"  FAILED: hpfeeds without --retain: {'no result' if w.get('res') is None else 'lost ' + str(w['res']['lost'])}"); failed = True
    w = r.get("warm")
    if w is not None and (w.get("res") is None or w["res"].get("lost")):
        print(f"  FAILED: hpfeeds, warm run: {'no result' if w.get('res') is None else 'lost ' + str(w['res']['lost'])}"); failed = True
    if skipped:
        print(f"  skipped: {skipped}")
    for side, got in (("hpfeeds", None if skipped else h), ("nats-server", n), ("null relay", f)):
        if got is None and (skipped and side == "hpfeeds" or side == "nats-server" and r.get("solo") or side == "null relay" and f is None):
            continue
        for run in runs(got):
            res = run and run.get("res")
            if res is None:
                print(f"  FAILED: {side} produced no result"); failed = True
            elif res.get("lost") or res.get("failed"):
                print(f"  FAILED: {side} lost {res.get('lost') or res.get('failed')}"); failed = True
sys.exit(1 if failed else 0)
PY
