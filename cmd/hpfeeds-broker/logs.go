package main

import (
	"context"
	"log/slog"
	"net"
)

// warnAtStart logs what may be a mistake in a configuration that works,
// once everything is bound, so that a start-up error stays one line.
func (o *options) warnAtStart(ctx context.Context, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(ctx, o.cfg.LookupTimeout)
	defer cancel()
	warnEmpty(ctx, log, o.opened)
	o.warnOpenExporter(log)
}

// durationSeconds writes durations in JSON logs as seconds (a float), as
// Prometheus and most log pipelines count time, rather than as slog's
// unlabelled nanoseconds.
func durationSeconds(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		return slog.Float64(a.Key, a.Value.Duration().Seconds())
	}
	return a
}

// warnOpenExporter warns when the exporter, which also serves the status
// pages (owners, client addresses, per-ident activity), listens beyond
// loopback with neither TLS nor a password.
func (o *options) warnOpenExporter(log *slog.Logger) {
	if o.exporter == "" || o.webConfig != "" {
		return
	}
	host, _, _ := net.SplitHostPort(o.exporter)
	if ip := net.ParseIP(host); host == "localhost" || ip != nil && ip.IsLoopback() {
		return
	}
	log.Warn("--exporter serves the status pages (owners, client addresses, per-ident activity) to anyone who can reach it: "+
		"bind it to 127.0.0.1, or require a password or client certificate with --web-config-file (docs/status.md)", "addr", o.exporter)
}
