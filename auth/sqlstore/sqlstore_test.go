package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
		{"database+sqlite:///relative.db", "sqlite", "file:relative.db?_pragma=busy_timeout(5000)"},
		{"database+sqlite:////var/lib/hpfeeds/abs.db", "sqlite", "file:/var/lib/hpfeeds/abs.db?_pragma=busy_timeout(5000)"},
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
	st, err := auth.Open(context.Background(), path, auth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
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

// The documented DDL for each server, and the shell that inserts a row.
var servers = []struct {
	name, addr, how string
	admin           string // driver DSN for creating the test database
	adminDriver     string
	ddl             string
	url             func(db string) string
	shell           func(db, sql string) (string, []string)
}{
	{
		name: "postgresql", addr: "127.0.0.1:5432", how: "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
		adminDriver: "pgx", admin: "postgres://postgres@127.0.0.1:5432/test",
		ddl: `CREATE SEQUENCE auth_keys_seq; CREATE TABLE auth_keys (
			id int NOT NULL DEFAULT NEXTVAL ('auth_keys_seq'),
			identifier varchar(36) DEFAULT NULL,
			secret varchar(36) DEFAULT NULL,
			publish json DEFAULT NULL,
			subscribe json DEFAULT NULL,
			PRIMARY KEY (id))`,
		url: func(db string) string { return "database+postgresql://postgres@127.0.0.1:5432/" + db },
		shell: func(db, sql string) (string, []string) {
			return "psql", []string{"-h", "127.0.0.1", "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-c", sql}
		},
	},
	{
		name: "mariadb", addr: "127.0.0.1:3306", how: "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd",
		adminDriver: "mysql", admin: "root@tcp(127.0.0.1:3306)/test?multiStatements=true",
		ddl: "CREATE TABLE `auth_keys` (`id` int AUTO_INCREMENT NOT NULL, `identifier` varchar(36) DEFAULT NULL, " +
			"`secret` varchar(36) DEFAULT NULL, `publish` json DEFAULT NULL, `subscribe` json DEFAULT NULL, PRIMARY KEY (`id`))",
		url: func(db string) string { return "database+mysql://root@127.0.0.1:3306/" + db },
		shell: func(db, sql string) (string, []string) {
			return "mariadb", []string{"-h", "127.0.0.1", "-u", "root", db, "-e", sql}
		},
	},
}

func TestDatabaseStores(t *testing.T) {
	for _, srv := range servers {
		t.Run(srv.name, func(t *testing.T) {
			storetest.RequireService(t, srv.addr, srv.how)
			admin, err := sql.Open(srv.adminDriver, srv.admin)
			if err != nil {
				t.Fatal(err)
			}
			db := fmt.Sprintf("hpfeeds_test_%d", time.Now().UnixNano())
			if _, err := admin.Exec("CREATE DATABASE " + db); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if srv.name == "postgresql" {
					admin.Exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '" + db + "'")
				}
				if _, err := admin.Exec("DROP DATABASE " + db); err != nil {
					t.Errorf("dropping %s: %v", db, err)
				}
				admin.Close()
			})
			name, args := srv.shell(db, srv.ddl)
			run(t, name, args...)

			st, err := auth.Open(context.Background(), srv.url(db), auth.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			b := brokertest.Start(t, st)
			storetest.ExpectRefused(t, b.Addr, "sensor", "s3cret")
			name, args = srv.shell(db, `INSERT INTO auth_keys (identifier, secret, publish, subscribe) VALUES ('sensor', 's3cret', '["events"]', '["events"]')`)
			run(t, name, args...)
			storetest.ExpectLogin(t, b.Addr, "sensor", "s3cret", "events")
			storetest.ExpectRefused(t, b.Addr, "sensor", "wrong")
			storetest.ExpectRefused(t, b.Addr, "unknown", "x")
			if u, _ := storetest.Lookup(t, st, "sensor"); u.Owner != "sensor" {
				t.Errorf("owner %q, want the identifier", u.Owner)
			}
			name, args = srv.shell(db, `INSERT INTO auth_keys (identifier, secret, publish, subscribe) VALUES ('nulls', 'x', NULL, '[]')`)
			run(t, name, args...)
			if u, found := storetest.Lookup(t, st, "nulls"); !found || len(u.PubChans)+len(u.SubChans) != 0 {
				t.Errorf("got %+v %v", u, found)
			}
			storetest.Editor(t, st.(auth.Editor), b.Addr)
		})
	}
}

// A database that goes away fails logins within the lookup timeout, and
// logins work again when it returns, with no restart.
func TestDatabaseOutage(t *testing.T) {
	srv := servers[0]
	storetest.RequireService(t, srv.addr, srv.how)
	proxy := storetest.NewProxy(t, srv.addr)
	st, err := auth.Open(context.Background(), "database+postgresql://postgres@"+proxy.Addr()+"/test", auth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := st.(auth.Pinger).Ping(ctx); err != nil {
		t.Fatal(err)
	}
	proxy.Cut()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel2()
	start := time.Now()
	if _, _, err := st.Lookup(ctx2, "anyone"); err == nil {
		t.Fatal("lookup through a cut connection succeeded")
	}
	if time.Since(start) > 3*time.Second {
		t.Fatalf("lookup took %v despite its deadline", time.Since(start))
	}
	proxy.Restore()
	var lastErr error
	for i := 0; i < 50; i++ {
		ctx3, cancel3 := context.WithTimeout(context.Background(), time.Second)
		_, _, lastErr = st.Lookup(ctx3, "anyone")
		cancel3()
		if lastErr == nil || !strings.Contains(lastErr.Error(), "connect") && !strings.Contains(lastErr.Error(), "EOF") && !strings.Contains(lastErr.Error(), "deadline") && !strings.Contains(lastErr.Error(), "closed") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The table does not exist in "test": an answer from the server (not a
	// connection error) proves the store is back.
	if lastErr != nil && !strings.Contains(lastErr.Error(), "auth_keys") {
		t.Fatalf("store did not recover: %v", lastErr)
	}
}
