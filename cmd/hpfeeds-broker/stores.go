package main

import (
	"context"
	"log/slog"
	"strings"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/auth/sqlstore"
)

// openOrPlan opens one --auth store for the broker. At start a missing
// SQLite file is created, as the Python broker did; --check-config creates
// nothing and says the broker would.
func openOrPlan(ctx context.Context, spec string, log *slog.Logger, mongoColl string, check bool) (auth.Store, error) {
	if abs, ok := sqlstore.Creatable(spec); ok && check {
		log.Warn("SQLite database missing or empty: the broker creates it with its authkeys table at start", "path", abs)
		return planned("sqlite:" + abs), nil
	}
	return openStore(ctx, spec, log, mongoColl, sqlstore.Settings{CreateMissing: !check})
}

// planned stands, in --check-config, for a store the broker creates at
// start: it knows no user.
type planned string

func (p planned) Lookup(context.Context, string) (auth.User, bool, error) {
	return auth.User{}, false, nil
}
func (p planned) String() string { return string(p) }
func (p planned) Close() error   { return nil }

// warnEmpty logs one line per store that holds no user: every login it is
// asked about fails, as silently as a wrong secret.
func warnEmpty(ctx context.Context, log *slog.Logger, stores auth.Chain) {
	for _, s := range stores {
		var empty bool
		var err error
		switch s := s.(type) {
		case interface {
			HasUsers(context.Context) (bool, error)
		}:
			var has bool
			has, err = s.HasUsers(ctx)
			empty = !has
		case auth.Lister:
			var users []auth.User
			users, err = s.ListUsers(ctx)
			empty = len(users) == 0
		default:
			continue
		}
		if err != nil {
			log.Debug("could not check the store for users", "store", s.String(), "err", err)
		} else if empty {
			log.Warn("credential store has no users: every login it is asked about fails; "+addUserHint(s.String()), "store", s.String())
		}
	}
}

// addUserHint says how to add a first user to the store named name.
func addUserHint(name string) string {
	switch {
	case name == auth.KindEnv:
		return "set HPFEEDS_<IDENT>_SECRET (and _PUBCHANS, _SUBCHANS) for each user (docs/stores.md)"
	case strings.HasPrefix(name, "sqlite:"):
		return "add one with `hpfeeds-broker user add --auth=" + strings.TrimPrefix(name, "sqlite:") + " --ident=…` or the sqlite3 shell (docs/stores.md)"
	}
	return "add one with `hpfeeds-broker user add --auth=… --ident=…` (docs/stores.md)"
}
