package sqlstore

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/auth/storetest"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
)

func TestDSN(t *testing.T) {
	for _, c := range []struct{ spec, driver, dsn string }{
		{"database+postgresql://hp:s3cret@db.example:5433/hpfeeds?sslmode=disable", "pgx", "postgres://hp:s3cret@db.example:5433/hpfeeds?sslmode=disable"},
		{"database+postgresql+asyncpg://hp@db/hpfeeds", "pgx", "postgres://hp@db/hpfeeds"},
		{"database+postgres://localhost/x", "pgx", "postgres://localhost/x"},
		{"database+mysql://root:pw@127.0.0.1:3307/hpfeeds", "mysql", "root:pw@tcp(127.0.0.1:3307)/hpfeeds"},
		{"database+mysql://root@db/hpfeeds", "mysql", "root@tcp(db:3306)/hpfeeds"},
		{"database+mysql://u:p%40ss@aurora.example/hp?charset=utf8mb4", "mysql", "u:p@ss@tcp(aurora.example:3306)/hp?charset=utf8mb4"},
		{"database+mysql://u@h/hp?ssl=true", "mysql", "u@tcp(h:3306)/hp?tls=true"},
		{"database+mysql://u@h/hp?unix_socket=/run/mysqld/mysqld.sock", "mysql", "u@unix(/run/mysqld/mysqld.sock)/hp"},
		{"database+mysql+aiomysql://u@h/hp?timeout=2s", "mysql", "u@tcp(h:3306)/hp?timeout=2s"},
		{"database+sqlite:///relative.db", "sqlite", "file:relative.db?mode=rw&_pragma=busy_timeout(5000)"},
		{"database+sqlite:////var/lib/hpfeeds/abs.db", "sqlite", "file:/var/lib/hpfeeds/abs.db?mode=rw&_pragma=busy_timeout(5000)"},
	} {
		d, dsn, err := DSN(c.spec)
		if err != nil {
			t.Errorf("%s: %v", c.spec, err)
			continue
		}
		if d != c.driver || dsn != c.dsn {
			t.Errorf("%s: got %s %q, want %s %q", c.spec, d, dsn, c.driver, c.dsn)
		}
	}
	for _, bad := range []string{"database+oracle://x/y", "database+sqlite://", "database+mysql"} {
		if _, _, err := DSN(bad); err == nil {
			t.Errorf("%s accepted", bad)
		} else if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("error shows the password: %v", err)
		}
	}
	_, _, err := DSN("database+oracle://hp:s3cret@db/x")
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("error %v", err)
	}
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

func TestSQLiteStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users.db")
	initSQLite(t, path)
	st := open(t, path)
	srv := brokertest.Start(t, st)
	storetest.ExpectRefused(t, srv.Addr, "sensor", "s3cret")

	// An operator adds a row with the sqlite3 shell while the broker runs.
	run(t, "sqlite3", path, `insert into authkeys (owner, ident, secret, pubchans, subchans)
		values ('alice', 'sensor', 's3cret', '["events"]', '["events"]')`)
	storetest.ExpectLogin(t, srv.Addr, "sensor", "s3cret", "events")
	storetest.ExpectRefused(t, srv.Addr, "sensor", "wrong")
	u, _ := storetest.Lookup(t, st, "sensor")
	if u.Owner != "alice" {
		t.Errorf("owner %q", u.Owner)
	}
	// NULL and empty lists mean no channels.
	run(t, "sqlite3", path, `insert into authkeys (owner, ident, secret, pubchans, subchans) values ('o', 'nolists', 'x', NULL, '')`)
	if u, found := storetest.Lookup(t, st, "nolists"); !found || len(u.PubChans)+len(u.SubChans) != 0 {
		t.Errorf("got %+v %v", u, found)
	}
	storetest.Editor(t, st.(auth.Editor), srv.Addr)
}

const insertSensor = `INSERT INTO auth_keys (identifier, secret, publish, subscribe) VALUES ('sensor', 's3cret', '["events"]', '["events"]')`

// open opens the store for spec until the test ends.
func open(t *testing.T, spec string) auth.Store {
	t.Helper()
	st, err := auth.Open(context.Background(), spec, auth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func TestDatabaseStores(t *testing.T) {
	for _, srv := range storetest.SQLServers {
		t.Run(srv.Name, func(t *testing.T) {
			spec, db := srv.NewUserTable(t)
			st := open(t, spec)
			b := brokertest.Start(t, st)
			storetest.ExpectRefused(t, b.Addr, "sensor", "s3cret")
			srv.Exec(t, db, insertSensor)
			storetest.ExpectLogin(t, b.Addr, "sensor", "s3cret", "events")
			storetest.ExpectRefused(t, b.Addr, "sensor", "wrong")
			storetest.ExpectRefused(t, b.Addr, "unknown", "x")
			if u, _ := storetest.Lookup(t, st, "sensor"); u.Owner != "sensor" {
				t.Errorf("owner %q, want the identifier", u.Owner)
			}
			srv.Exec(t, db, `INSERT INTO auth_keys (identifier, secret, publish, subscribe) VALUES ('nulls', 'x', NULL, '[]')`)
			if u, found := storetest.Lookup(t, st, "nulls"); !found || len(u.PubChans)+len(u.SubChans) != 0 {
				t.Errorf("got %+v %v", u, found)
			}
			storetest.Editor(t, st.(auth.Editor), b.Addr)
		})
	}
}

// A database that goes away, loudly or silently, fails logins within the
// lookup timeout while clients logged in before are served, and logins work
// again when it returns, with no restart.
func TestDatabaseOutage(t *testing.T) {
	withSensor(t, func(t *testing.T, srv storetest.SQLServer, spec string) {
		proxy := storetest.NewProxy(t, srv.Addr)
		st := open(t, strings.Replace(spec, srv.Addr, proxy.Addr(), 1))
		storetest.Outage(t, st, proxy, "sensor", "s3cret", "events")
	})
}

// A reconnect storm larger than the database's max_connections (100 on
// PostgreSQL, 151 on MariaDB by default) logs everyone in: logins queue for
// the store's pooled connections rather than open one each.
func TestLoginStorm(t *testing.T) {
	withSensor(t, func(t *testing.T, srv storetest.SQLServer, spec string) {
		b := brokertest.Start(t, open(t, spec))
		storetest.LoginStorm(t, b.Addr, "sensor", "s3cret", "events", 400)
	})
}

// withSensor runs f on each SQL server, on a table of its own holding the
// sensor row, with the spec that reaches it.
func withSensor(t *testing.T, f func(t *testing.T, srv storetest.SQLServer, spec string)) {
	for _, srv := range storetest.SQLServers {
		t.Run(srv.Name, func(t *testing.T) {
			spec, db := srv.NewUserTable(t)
			srv.Exec(t, db, insertSensor)
			f(t, srv, spec)
		})
	}
}

// initSQLite creates the SQLite store at path as `user init` does.
func initSQLite(t *testing.T, path string) {
	t.Helper()
	st, err := auth.Open(context.Background(), path, auth.Options{Settings: []any{Settings{Create: true}}})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if created, err := st.(auth.Initializer).Init(context.Background()); err != nil || !created {
		t.Fatalf("init: created %v, %v", created, err)
	}
}

// Opening, pinging and checking a SQLite store create nothing: a broker
// (or --check-config) run in the wrong directory says so and leaves no
// empty database behind. Init creates the documented table once.
func TestSQLiteCreatesNothing(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := auth.Open(ctx, filepath.Join(dir, "sqlite.db"), auth.Options{}); err == nil ||
		!strings.Contains(err.Error(), "no SQLite database at "+filepath.Join(dir, "sqlite.db")) {
		t.Errorf("missing default store: %v", err)
	}
	st := open(t, "database+sqlite:///"+filepath.Join(dir, "db.sqlite"))
	if err := st.(auth.Pinger).Ping(ctx); err == nil {
		t.Error("ping of a missing database+sqlite file succeeded")
	}
	if err := st.(auth.Checker).Check(ctx); err == nil {
		t.Error("check of a missing database+sqlite file succeeded")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("opening created %v", entries)
	}
	// A file without the table: named in the error, and not fixed.
	run(t, "sqlite3", filepath.Join(dir, "db.sqlite"), "CREATE TABLE other (x)")
	if err := st.(auth.Checker).Check(ctx); err == nil || !strings.Contains(err.Error(), "auth_keys") {
		t.Errorf("check without the table: %v", err)
	}
	for i, want := range []bool{true, false} {
		created, err := st.(auth.Initializer).Init(ctx)
		if err != nil || created != want {
			t.Fatalf("init %d: created %v, %v", i, created, err)
		}
	}
	if err := st.(auth.Checker).Check(ctx); err != nil {
		t.Fatal(err)
	}
	run(t, "sqlite3", filepath.Join(dir, "db.sqlite"), insertSensor)
	if _, found := storetest.Lookup(t, st, "sensor"); !found {
		t.Fatal("the documented INSERT did not make a user")
	}
}

// Init makes the documented table on each server: checked, with its
// UNIQUE key refusing a second row for an identifier.
func TestInitDatabases(t *testing.T) {
	ctx := context.Background()
	for _, srv := range storetest.SQLServers {
		t.Run(srv.Name, func(t *testing.T) {
			db := srv.NewDatabase(t)
			st := open(t, srv.URL(db))
			if err := st.(auth.Checker).Check(ctx); err == nil {
				t.Fatal("check passed without a table")
			}
			for i, want := range []bool{true, false} {
				if created, err := st.(auth.Initializer).Init(ctx); err != nil || created != want {
					t.Fatalf("init %d: created %v, %v", i, created, err)
				}
			}
			if err := st.(auth.Checker).Check(ctx); err != nil {
				t.Fatal(err)
			}
			srv.Exec(t, db, insertSensor)
			if _, err := st.(*Store).db.Exec(insertSensor); err == nil {
				t.Fatal("a second row for sensor was accepted")
			}
		})
	}
}

// Revalidation asks for many idents in one query (chunked under each
// database's limit on parameters), and gets only exact spellings back.
func TestLookupBatch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users.db")
	initSQLite(t, path)
	t.Run("SQLite", func(t *testing.T) { storetest.Batch(t, open(t, path), 1200, nil) })
	for _, srv := range storetest.SQLServers {
		t.Run(srv.Name, func(t *testing.T) {
			spec, _ := srv.NewUserTable(t)
			storetest.Batch(t, open(t, spec), 1200, nil)
		})
	}
}
