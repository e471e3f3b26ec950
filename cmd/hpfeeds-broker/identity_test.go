package main

import (
	"strings"
	"testing"

	"github.com/hpfeeds-go/hpfeeds/auth/storetest"
)

// A table holding identifiers that its collation finds equal ("Alice" and
// "alice" in MariaDB's default one) is reported once at start-up; the
// documented table, with its key, is not.
func TestDuplicateIdentsWarning(t *testing.T) {
	srv := storetest.MariaDB
	const warning = "identifiers held by several rows"
	for _, c := range []struct {
		ddl   string
		warns int
	}{{srv.LegacyDDL, 1}, {srv.DDL, 0}} {
		db := srv.NewDatabase(t)
		srv.Exec(t, db, c.ddl)
		srv.Exec(t, db, `INSERT INTO auth_keys (identifier, secret) VALUES ('Alice', 'x'), ('alice', 'y')`)
		code, out := run(t, nil, "--check-config", "--auth="+srv.URL(db), "-e", "tcp:interface=127.0.0.1:port=0")
		if code != 0 || strings.Count(out, warning) != c.warns {
			t.Errorf("exit %d, want %d warning(s):\n%s", code, c.warns, out)
		}
	}
}
