GO ?= go

.PHONY: test lint build deps bench bench-smoke release cross ferretdb fuzz-smoke

build:
	$(GO) build ./...

lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...

# The database shells the store tests insert rows with, as an operator would,
# and Debian's chromium for the status page's browser test, each installed
# only when its command is missing: without recommended packages, and never
# when that would upgrade an installed one (chromium's recommends once
# upgraded systemd and added udev and avahi-daemon). Needs root and the
# Debian mirror.
APT_INSTALL := apt-get install -y -qq --no-upgrade --no-install-recommends

# $(call need,COMMAND,PACKAGE) installs PACKAGE when COMMAND is missing.
define need
@command -v $(1) >/dev/null || { apt-get update -qq && \
  up=$$($(APT_INSTALL) -s $(2) | sed -n 's/^Inst \([^ ]*\) \[.*/\1/p') && \
  if [ -n "$$up" ]; then echo "make deps: installing $(2) would upgrade" $$up "- install it by hand"; exit 1; fi && \
  $(APT_INSTALL) $(2); }
endef

deps:
	$(call need,sqlite3,sqlite3)
	$(call need,psql,postgresql-client)
	$(call need,mariadb,mariadb-client)
	$(call need,nats-server,nats-server)
	$(call need,systemd-analyze,systemd)
	$(call need,chromium,chromium)

# The MongoDB-wire server of the Mongo store tests: FerretDB v1 on SQLite, in
# its own module so its dependencies stay out of the broker's go.mod.
FERRETDB := bin/ferretdb

ferretdb: $(FERRETDB)

$(FERRETDB): testservers/ferretdb/main.go testservers/ferretdb/go.mod testservers/ferretdb/go.sum
	cd testservers/ferretdb && CGO_ENABLED=0 $(GO) build -o ../../$(FERRETDB) .

# The tests run against a FerretDB and a nats-server with JetStream started
# here on free ports, stopped and removed when they end, whatever their
# outcome: a run never depends on the machine's nats-server being up (a CI
# run once found 127.0.0.1:4222 down) nor leaves streams in it.
test: deps lint cross $(FERRETDB)
	@dir=$$(mktemp -d); \
	$(FERRETDB) -dir $$dir/data -uri-file $$dir/uri >/dev/null 2>$$dir/log & pid=$$!; \
	nats-server -a 127.0.0.1 -p -1 -js -sd $$dir/nats --ports_file_dir $$dir >$$dir/nats.log 2>&1 & npid=$$!; \
	trap 'kill $$pid $$npid 2>/dev/null; wait $$pid $$npid 2>/dev/null; rm -rf $$dir' EXIT; \
	for i in $$(seq 100); do [ -s $$dir/uri ] && [ -s $$dir/nats-server_$$npid.ports ] && break; sleep 0.1; done; \
	[ -s $$dir/uri ] || { echo "the FerretDB test server did not start:"; cat $$dir/log; exit 1; }; \
	nats=$$(sed -n 's|.*"nats://\([^"]*\)".*|\1|p' $$dir/nats-server_$$npid.ports 2>/dev/null); \
	[ -n "$$nats" ] || { echo "the nats-server test server did not start:"; cat $$dir/nats.log; exit 1; }; \
	echo "FerretDB test server: $$(cat $$dir/uri); nats-server test server: $$nats"; \
	HPFEEDS_TEST_MONGODB_URI=$$(cat $$dir/uri) HPFEEDS_TEST_NATS=$$nats $(GO) test -race -count=1 ./...
	$(MAKE) fuzz-smoke
	$(MAKE) bench-smoke

# Every fuzz target for a fixed number of inputs, about 5 s each here (go
# test fuzzes one target per run). Counts, not durations: with go1.26 a
# -fuzztime duration can end in a spurious "context deadline exceeded"
# (go.dev/issue/75804). A crasher fails the run and is written under the
# package's testdata/fuzz, where it stays as a regression seed once fixed.
FUZZ_TARGETS := ./wire:FuzzSplit:1000000 ./wire:FuzzReader:600000 \
	./broker:FuzzSession:20000 ./broker:FuzzParseEndpoint:200000 \
	./auth/jsonfile:FuzzParse:500000 ./auth/sqlstore:FuzzDSN:60000

fuzz-smoke:
	@log=$$(mktemp); trap 'rm -f $$log' EXIT; \
	for t in $(FUZZ_TARGETS); do \
	  pkg=$${t%%:*}; rest=$${t#*:}; name=$${rest%%:*}; count=$${rest#*:}; \
	  echo "fuzz $$name ($$pkg, $$count inputs)"; \
	  $(GO) test -run '^$$' -fuzz "^$$name$$" -fuzztime $${count}x $$pkg >$$log 2>&1 || { cat $$log; exit 1; }; \
	done

# hpfeeds vs nats-server on loopback; see docs/performance.md.
bench:
	bench/run.sh

# Every row of the benchmark with tiny counts, so the script cannot rot.
bench-smoke:
	cd bench && $(GO) vet ./...
	bench/run.sh --smoke
	bench/soak.sh -duration 6s -storm-every 1s -storm-size 50 -garbage 10 -outage-every 2s -outage-for 1s

PLATFORMS := linux/amd64 linux/arm64 darwin/arm64 windows/amd64

# What --version prints: the nearest tag (or the commit) and the commit.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo unknown)
COMMIT ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
LDFLAGS := -s -w -X github.com/hpfeeds-go/hpfeeds/internal/version.Version=$(VERSION) \
	-X github.com/hpfeeds-go/hpfeeds/internal/version.Commit=$(COMMIT)

# Static release binaries of both commands in dist/.
release:
	@for p in $(PLATFORMS); do \
	  os=$${p%/*}; arch=$${p#*/}; ext=; [ $$os = windows ] && ext=.exe; \
	  for c in hpfeeds-broker hpfeeds; do \
	    echo "dist/$$c-$$os-$$arch$$ext"; \
	    CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags="$(LDFLAGS)" -o dist/$$c-$$os-$$arch$$ext ./cmd/$$c || exit 1; \
	  done; \
	done

# Every platform compiles (CI: portability must not rot).
cross:
	@for p in $(PLATFORMS); do \
	  CGO_ENABLED=0 GOOS=$${p%/*} GOARCH=$${p#*/} $(GO) build -o /dev/null ./cmd/... || exit 1; \
	done
