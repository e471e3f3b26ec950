package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
	"github.com/hpfeeds-go/hpfeeds/wire"
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

// requireService fails in CI and skips elsewhere when addr does not answer.
func requireService(t *testing.T, addr, how string) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err == nil {
		c.Close()
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is not reachable (%v); start it with: %s", addr, err, how)
	}
	t.Skipf("%s is not reachable (%v); start it with: %s", addr, err, how)
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// login authenticates a raw client, sending frames right behind AUTH.
func login(t *testing.T, addr, ident, secret string, frames ...[]byte) *wire.Reader {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	rd := wire.NewReader(nc, wire.UniformLimits(1<<20))
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	info, err := rd.Next()
	if err != nil {
		t.Fatal(err)
	}
	a, _ := wire.AppendAuth(nil, info.Payload, ident, secret)
	for _, f := range frames {
		a = append(a, f...)
	}
	nc.Write(a)
	return rd
}

// expectLogin checks that ident can log in, subscribe to and publish on chan.
func expectLogin(t *testing.T, addr, ident, secret, channel string) {
	t.Helper()
	s, _ := wire.AppendSubscribe(nil, []byte(ident), []byte(channel))
	p, _ := wire.AppendPublish(nil, []byte(ident), []byte(channel), []byte("hello"))
	rd := login(t, addr, ident, secret, s, p)
	f, err := rd.Next()
	if err != nil {
		t.Fatalf("%s: %v", ident, err)
	}
	if f.Op != wire.OpPublish || string(f.Payload) != "hello" {
		t.Fatalf("%s: got %v %q", ident, f.Op, f.Payload)
	}
}

func expectRefused(t *testing.T, addr, ident, secret string) {
	t.Helper()
	rd := login(t, addr, ident, secret)
	f, err := rd.Next()
	if err != nil {
		t.Fatalf("%s: %v", ident, err)
	}
	if f.Op != wire.OpError || string(f.Payload) != "Authentication failed for "+ident {
		t.Fatalf("%s: got %v %q", ident, f.Op, f.Payload)
	}
}

func lookup(t *testing.T, s auth.Store, ident string) (auth.User, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	u, found, err := s.Lookup(ctx, ident)
	if err != nil {
		t.Fatalf("lookup %s: %v", ident, err)
	}
	return u, found
}

func TestSQLiteStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users.db")
	st, err := auth.Open(context.Background(), path, auth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	srv := brokertest.Start(t, st)
	expectRefused(t, srv.Addr, "sensor", "s3cret")

	// An operator adds a row with the sqlite3 shell while the broker runs.
	run(t, "sqlite3", path, `insert into authkeys (owner, ident, secret, pubchans, subchans)
		values ('alice', 'sensor', 's3cret', '["events"]', '["events"]')`)
	expectLogin(t, srv.Addr, "sensor", "s3cret", "events")
	expectRefused(t, srv.Addr, "sensor", "wrong")
	u, _ := lookup(t, st, "sensor")
	if u.Owner != "alice" {
		t.Errorf("owner %q", u.Owner)
	}
	// NULL and empty lists mean no channels.
	run(t, "sqlite3", path, `insert into authkeys (owner, ident, secret, pubchans, subchans) values ('o', 'nolists', 'x', NULL, '')`)
	if u, found := lookup(t, st, "nolists"); !found || len(u.PubChans)+len(u.SubChans) != 0 {
		t.Errorf("got %+v %v", u, found)
	}
	testEditor(t, st.(auth.Editor), srv.Addr)
}

// testEditor adds, lists, replaces and removes a user, each visible to a
// running broker at the next login.
func testEditor(t *testing.T, e auth.Editor, addr string) {
	ctx := context.Background()
	if err := e.PutUser(ctx, auth.User{Ident: "edited", Secret: "one", PubChans: []string{"c"}, SubChans: []string{"c"}}); err != nil {
		t.Fatal(err)
	}
	expectLogin(t, addr, "edited", "one", "c")
	if err := e.PutUser(ctx, auth.User{Ident: "edited", Secret: "two", PubChans: []string{"d"}, SubChans: []string{"d"}}); err != nil {
		t.Fatal(err)
	}
	expectRefused(t, addr, "edited", "one")
	expectLogin(t, addr, "edited", "two", "d")
	users, err := e.ListUsers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(users, func(u auth.User) bool { return u.Ident == "edited" && u.Owner == "edited" }) {
		t.Errorf("edited not listed: %+v", users)
	}
	if found, err := e.DeleteUser(ctx, "edited"); !found || err != nil {
		t.Fatalf("delete: %v %v", found, err)
	}
	expectRefused(t, addr, "edited", "two")
	if found, _ := e.DeleteUser(ctx, "edited"); found {
		t.Error("deleted twice")
	}
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
			requireService(t, srv.addr, srv.how)
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
			expectRefused(t, b.Addr, "sensor", "s3cret")
			name, args = srv.shell(db, `INSERT INTO auth_keys (identifier, secret, publish, subscribe) VALUES ('sensor', 's3cret', '["events"]', '["events"]')`)
			run(t, name, args...)
			expectLogin(t, b.Addr, "sensor", "s3cret", "events")
			expectRefused(t, b.Addr, "sensor", "wrong")
			expectRefused(t, b.Addr, "unknown", "x")
			if u, _ := lookup(t, st, "sensor"); u.Owner != "sensor" {
				t.Errorf("owner %q, want the identifier", u.Owner)
			}
			name, args = srv.shell(db, `INSERT INTO auth_keys (identifier, secret, publish, subscribe) VALUES ('nulls', 'x', NULL, '[]')`)
			run(t, name, args...)
			if u, found := lookup(t, st, "nulls"); !found || len(u.PubChans)+len(u.SubChans) != 0 {
				t.Errorf("got %+v %v", u, found)
			}
			testEditor(t, st.(auth.Editor), b.Addr)
		})
	}
}

// A database that goes away fails logins within the lookup timeout, and
// logins work again when it returns, with no restart.
func TestDatabaseOutage(t *testing.T) {
	srv := servers[0]
	requireService(t, srv.addr, srv.how)
	proxy := newProxy(t, srv.addr)
	st, err := auth.Open(context.Background(), "database+postgresql://postgres@"+proxy.addr()+"/test", auth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := st.(auth.Pinger).Ping(ctx); err != nil {
		t.Fatal(err)
	}
	proxy.cut()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel2()
	start := time.Now()
	if _, _, err := st.Lookup(ctx2, "anyone"); err == nil {
		t.Fatal("lookup through a cut connection succeeded")
	}
	if time.Since(start) > 3*time.Second {
		t.Fatalf("lookup took %v despite its deadline", time.Since(start))
	}
	proxy.restore()
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

// proxy forwards TCP to a server until cut, refusing and dropping
// connections while cut.
type proxy struct {
	t      *testing.T
	l      net.Listener
	target string
	mu     sync.Mutex
	down   bool
	conns  []net.Conn
}

func newProxy(t *testing.T, target string) *proxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, l: l, target: target}
	t.Cleanup(func() { l.Close(); p.cut() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			if p.down {
				p.mu.Unlock()
				c.Close()
				continue
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				p.mu.Unlock()
				c.Close()
				continue
			}
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			go func() { io.Copy(s, c); s.Close() }()
			go func() { io.Copy(c, s); c.Close() }()
		}
	}()
	return p
}

func (p *proxy) addr() string { return p.l.Addr().String() }

func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *proxy) restore() {
	p.mu.Lock()
	p.down = false
	p.mu.Unlock()
}
