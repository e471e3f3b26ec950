GO ?= go

.PHONY: test lint build deps

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

test: deps lint
	$(GO) test -race -count=1 ./...
