package sqlstore

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/auth/storetest"
	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
)

const insertAlices = `INSERT INTO auth_keys (identifier, secret, publish, subscribe) VALUES
	('Alice', 'upper', '["events"]', '["events"]'),
	('alice', 'lower', '["events"]', '["events"]')`

// MariaDB's default collation ignores case and trailing spaces. With the
// Python broker's table (no key) and with the documented one (a UNIQUE key
// in a binary collation), each row logs in only as itself: Alice's secret
// does not open alice's session, alice is not refused, and spellings no
// row holds exactly are unknown idents.
func TestCollationCollision(t *testing.T) {
	srv := storetest.MariaDB
	for _, c := range []struct {
		name, ddl  string
		duplicates int
	}{{"python-ddl", srv.LegacyDDL, 1}, {"documented-ddl", srv.DDL, 0}} {
		t.Run(c.name, func(t *testing.T) {
			db := srv.NewDatabase(t)
			srv.Exec(t, db, c.ddl)
			srv.Exec(t, db, insertAlices)
			st := open(t, srv.URL(db))
			b := brokertest.Start(t, st)
			storetest.ExpectLogin(t, b.Addr, "Alice", "upper", "events")
			storetest.ExpectLogin(t, b.Addr, "alice", "lower", "events")
			storetest.ExpectRefused(t, b.Addr, "alice", "upper")
			before := b.Broker.Snapshot().Errors[broker.ErrorKey{Ident: "", Category: broker.CategoryInvalidIdent}]
			for _, spelling := range []string{"ALICE", "aLiCe", "alice ", "Alice  "} {
				storetest.ExpectRefused(t, b.Addr, spelling, "upper")
				storetest.ExpectRefused(t, b.Addr, spelling, "lower")
			}
			if n := b.Broker.Snapshot().Errors[broker.ErrorKey{Ident: "", Category: broker.CategoryInvalidIdent}]; n != before+8 {
				t.Errorf("invalid-ident went from %d to %d, want 8 more: other spellings must fail as unknown idents", before, n)
			}
			dups, err := st.(auth.DuplicateFinder).DuplicateIdents(context.Background())
			if err != nil || len(dups) != c.duplicates {
				t.Errorf("duplicates %q (%v), want %d", dups, err, c.duplicates)
			}
		})
	}
}

// The documented key refuses a second row for an identifier, trailing
// spaces included, and the migration adds it to a Python broker's table
// once the extra rows are gone.
func TestIdentifierKey(t *testing.T) {
	withSensor(t, func(t *testing.T, srv storetest.SQLServer, spec string) {
		st := open(t, spec).(*Store)
		for _, dup := range []string{"sensor", "sensor "} {
			if srv.Name == storetest.PostgreSQL.Name && dup != "sensor" {
				continue // PostgreSQL's varchar keeps trailing spaces: another identifier
			}
			_, err := st.db.Exec(`INSERT INTO auth_keys (identifier, secret) VALUES (`+st.d.placeholder(1)+`, 'x')`, dup)
			if err == nil {
				t.Errorf("a second row %q was accepted", dup)
			}
		}

		legacy := srv.NewDatabase(t)
		srv.Exec(t, legacy, srv.LegacyDDL)
		srv.Exec(t, legacy, insertSensor+", ('sensor', 'again', NULL, NULL)")
		lst := open(t, srv.URL(legacy)).(*Store)
		if dups, err := lst.DuplicateIdents(context.Background()); err != nil || !slices.Equal(dups, []string{"sensor"}) {
			t.Fatalf("duplicates %q (%v), want [sensor]", dups, err)
		}
		srv.Exec(t, legacy, "DELETE FROM auth_keys WHERE secret = 'again'")
		srv.Exec(t, legacy, srv.Migrate)
		_, err := lst.db.Exec(`INSERT INTO auth_keys (identifier, secret) VALUES ('sensor', 'x')`)
		if err == nil || !strings.Contains(strings.ToLower(err.Error()), "duplicate") {
			t.Errorf("after the migration a second row gave %v, want a duplicate key error", err)
		}
	})
}

// Idents no store can hold are refused before the lookup, as unknown
// idents: on PostgreSQL, NUL and invalid UTF-8 made the query fail, so an
// unauthenticated client could raise the store-down alert.
func TestImpossibleIdentsAreNotStoreErrors(t *testing.T) {
	withSensor(t, func(t *testing.T, srv storetest.SQLServer, spec string) {
		b := brokertest.Start(t, open(t, spec))
		for _, ident := range []string{"", "sen\x00sor", "sensor\xff", "\xc3"} {
			storetest.ExpectRefused(t, b.Addr, ident, "s3cret")
		}
		if n := b.Broker.Snapshot().Errors[broker.ErrorKey{Ident: "", Category: broker.CategoryErrorCheckingIdent}]; n != 0 {
			t.Errorf("%d store errors, want none", n)
		}
		if n := b.Broker.Snapshot().Errors[broker.ErrorKey{Ident: "", Category: broker.CategoryInvalidIdent}]; n != 4 {
			t.Errorf("invalid-ident %d, want 4", n)
		}
		storetest.ExpectLogin(t, b.Addr, "sensor", "s3cret", "events")
	})
}
