package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/hpfeeds-go/hpfeeds/broker"
)

// reloader is a store that keeps its users in memory and can re-read them
// on demand: the JSON file.
type reloader interface {
	Reload() error
	String() string
}

// onHUP re-reads the JSON user files and TLS certificates at each SIGHUP
// (logrotate sends one) and logs one line, until ctx ends. What does not
// load keeps its previous contents.
func (o *options) onHUP(ctx context.Context, log *slog.Logger, hup <-chan os.Signal, listeners []*broker.Listener) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		var done []string
		var errs []error
		for _, s := range o.reloaders {
			if err := s.Reload(); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", s, err))
			} else {
				done = append(done, s.String())
			}
		}
		for _, l := range listeners {
			if l.Endpoint.Class != "tls" {
				continue
			}
			if err := l.Reload(); err != nil {
				errs = append(errs, err)
			} else {
				done = append(done, l.Endpoint.Cert)
			}
		}
		if len(errs) > 0 {
			log.Warn("SIGHUP: re-read user files and TLS certificates; those that did not load keep their previous contents",
				"reloaded", strings.Join(done, ", "), "err", errors.Join(errs...))
			continue
		}
		log.Info("SIGHUP: re-read user files and TLS certificates", "reloaded", strings.Join(done, ", "))
	}
}
