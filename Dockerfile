# Build: a static binary (no cgo: the SQLite driver is pure Go).
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# What --version prints: .git is not in the build context, so pass them
# (docs/deployment.md shows how), as make release sets them.
ARG VERSION=unknown
ARG COMMIT=unknown
RUN ldflags="-s -w -X github.com/hpfeeds-go/hpfeeds/internal/version.Version=$VERSION -X github.com/hpfeeds-go/hpfeeds/internal/version.Commit=$COMMIT" \
 && CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" -o /out/hpfeeds-broker ./cmd/hpfeeds-broker \
 && CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" -o /out/hpfeeds ./cmd/hpfeeds

# Run: the Python image's layout, so its compose files work with the image
# name swapped. The sqlite3 shell is there for
# `docker-compose run --rm hpfeeds sqlite3 sqlite.db`. The entrypoint starts
# as root only to give /app/var to the user hpfeeds (a Python image's
# volume is root's), then runs the command as hpfeeds (setpriv).
FROM alpine:3.20
RUN apk --no-cache add sqlite ca-certificates setpriv \
 && adduser -D -H -u 10001 hpfeeds \
 && mkdir -p /app/bin /app/var \
 && chown hpfeeds:hpfeeds /app/var
COPY --from=build /out/ /app/bin/
COPY packaging/docker-entrypoint.sh /app/bin/
ENV PATH=/app/bin:$PATH
WORKDIR /app/var
VOLUME /app/var
ENTRYPOINT ["/app/bin/docker-entrypoint.sh"]
EXPOSE 10000/tcp
EXPOSE 9431/tcp
CMD ["/app/bin/hpfeeds-broker", "--endpoint=tcp:port=10000", "--exporter=0.0.0.0:9431", "--auth=/app/var/sqlite.db"]
