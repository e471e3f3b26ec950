#!/usr/bin/env bash
# Soak run: minutes of mixed load on the broker, with reconnect storms,
# garbage connections and credential-database outages. Not part of make test.
#   bench/soak.sh                      5 minutes with the defaults
#   bench/soak.sh -duration 30m -rate 20000
# Needs the machine's PostgreSQL (see README). Exits non-zero if a healthy
# subscriber lost a message. Flags: go run ./bench/soak -h
set -euo pipefail
cd "$(dirname "$0")/.."
case " $* " in *" -pg"*) ;; *)
  if ! (echo >/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
    msg="PostgreSQL is not reachable on 127.0.0.1:5432; start it with: pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start"
    # In CI a missing service is a failure; on a laptop the soak is skipped.
    if [ -n "${CI:-}" ]; then echo "soak: $msg" >&2; exit 1; fi
    echo "soak: skipped: $msg"; exit 0
  fi ;;
esac
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
go build -o "$work/hpfeeds-broker" ./cmd/hpfeeds-broker
(cd bench && go build -o "$work/soak" ./soak)
ulimit -n "$(ulimit -Hn)"
"$work/soak" -broker "$work/hpfeeds-broker" "$@"
