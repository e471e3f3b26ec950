GO ?= go

.PHONY: test lint build deps bench bench-smoke release cross

build:
	$(GO) build ./...

lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...

# The database shells the store tests insert rows with, as an operator would.
deps:
	@command -v sqlite3 >/dev/null || { apt-get update -qq && apt-get install -y -qq sqlite3; }
	@command -v psql >/dev/null || { apt-get update -qq && apt-get install -y -qq postgresql-client; }
	@command -v mariadb >/dev/null || { apt-get update -qq && apt-get install -y -qq mariadb-client; }
	@command -v nats-server >/dev/null || { apt-get update -qq && apt-get install -y -qq nats-server; }
	@command -v systemd-analyze >/dev/null || { apt-get update -qq && apt-get install -y -qq systemd; }

test: deps lint cross
	$(GO) test -race -count=1 ./...
	$(MAKE) bench-smoke

# hpfeeds vs nats-server on loopback; see docs/performance.md.
bench:
	bench/run.sh

# Every row of the benchmark with tiny counts, so the script cannot rot.
bench-smoke:
	cd bench && $(GO) vet ./...
	bench/run.sh --smoke

PLATFORMS := linux/amd64 linux/arm64 darwin/arm64 windows/amd64

# Static release binaries of both commands in dist/.
release:
	@for p in $(PLATFORMS); do \
	  os=$${p%/*}; arch=$${p#*/}; ext=; [ $$os = windows ] && ext=.exe; \
	  for c in hpfeeds-broker hpfeeds; do \
	    echo "dist/$$c-$$os-$$arch$$ext"; \
	    CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags="-s -w" -o dist/$$c-$$os-$$arch$$ext ./cmd/$$c || exit 1; \
	  done; \
	done

# Every platform compiles (CI: portability must not rot).
cross:
	@for p in $(PLATFORMS); do \
	  CGO_ENABLED=0 GOOS=$${p%/*} GOARCH=$${p#*/} $(GO) build -o /dev/null ./cmd/... || exit 1; \
	done
