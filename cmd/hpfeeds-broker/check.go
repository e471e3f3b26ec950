package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/cluster"
)

// check is --check-config: what the broker needs at start-up, checked
// without binding a port or creating anything (as nginx -t and
// nats-server -t do, so it runs beside the broker it is about to
// replace), and one line on stdout, or one error. Warnings the broker
// would log at start-up are put on that line.
func (o *options) check(ctx context.Context, eps []broker.Endpoint) error {
	var warnings bytes.Buffer
	quiet := slog.New(slog.NewTextHandler(&warnings, &slog.HandlerOptions{
		Level: slog.LevelWarn,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && (a.Key == slog.TimeKey || a.Key == slog.LevelKey) {
				return slog.Attr{}
			}
			return a
		},
	}))
	for _, ep := range eps {
		if err := ep.Check(); err != nil {
			return err
		}
	}
	if o.exporter != "" {
		host, _, _ := net.SplitHostPort(o.exporter)
		if err := broker.CheckInterface(host); err != nil {
			return fmt.Errorf("--exporter %s: %w", o.exporter, err)
		}
	}
	store, err := o.openStores(ctx, quiet, true, nil)
	if err != nil {
		return err
	}
	defer store.Close()
	cctx, cancel := context.WithTimeout(ctx, o.cfg.LookupTimeout)
	defer cancel()
	if err := store.Check(cctx); err != nil {
		return fmt.Errorf("credential store not usable: %w", err)
	}
	cfg := o.cfg
	cfg.Auth, cfg.Logger = store, quiet
	bridge, err := o.joinCluster(quiet, cfg, true)
	if err != nil {
		return err
	}
	retained, err := o.retain.checkConfig(cctx, quiet, bridge)
	if err != nil {
		return err
	}
	clustered := ""
	if bridge != nil {
		defer bridge.Close()
		clustered = ", cluster: " + bridge.String()
	}
	b, err := broker.New(cfg) // checks the limits
	if err != nil {
		return err
	}
	b.Shutdown(ctx)
	o.warnAtStart(ctx, quiet)
	line := fmt.Sprintf("configuration OK: %d endpoint(s), credential stores: %s%s", len(eps), store, clustered+retained)
	if w := strings.TrimSpace(warnings.String()); w != "" {
		line += "; warning: " + strings.ReplaceAll(w, "\n", "; warning: ")
	}
	fmt.Fprintln(os.Stdout, line)
	fmt.Fprint(os.Stdout, o.parsed(eps, store, bridge))
	return nil
}

// parsed lists, one a line, what --check-config parsed: the endpoints, the
// credential stores in the order they are asked, the exporter and the
// cluster.
func (o *options) parsed(eps []broker.Endpoint, stores auth.Chain, bridge *cluster.Bridge) string {
	var b strings.Builder
	for _, ep := range eps {
		fmt.Fprintf(&b, "endpoint: %s\n", ep)
	}
	for _, s := range stores {
		fmt.Fprintf(&b, "credential store: %s\n", s)
	}
	if o.exporter != "" {
		web := "no --web-config-file: plain HTTP, no password"
		if o.webConfig != "" {
			web = "--web-config-file " + o.webConfig
		}
		fmt.Fprintf(&b, "exporter: %s (%s)\n", o.exporter, web)
	}
	if bridge != nil {
		fmt.Fprintf(&b, "cluster: %s\n", bridge)
	}
	return b.String()
}

// joinCluster connects to NATS if --cluster is given; mustConnect makes a
// NATS that cannot be reached an error rather than something to retry.
func (o *options) joinCluster(log *slog.Logger, cfg broker.Config, mustConnect bool) (*cluster.Bridge, error) {
	if o.cluster.URLs == "" {
		return nil, nil
	}
	opts := o.cluster
	opts.Logger = log
	opts.Name = "hpfeeds-broker " + cfg.Name
	opts.MaxBody = cfg.MaxPublishSize
	opts.MustConnect = mustConnect
	br, err := cluster.New(opts)
	if err != nil {
		hint := ""
		if !errors.Is(err, cluster.ErrUnreachable) {
			hint = " (check the --cluster-* credential and TLS flags)"
		}
		return nil, fmt.Errorf("--cluster=%s: %w%s", cluster.Redact(opts.URLs), err, hint)
	}
	return br, nil
}
