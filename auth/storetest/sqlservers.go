package storetest

import (
	"database/sql"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib"
)

// SQLServer is one of the machine's database servers that the database+
// store is tested against, with the documented auth_keys DDL for it.
type SQLServer struct {
	Name string // postgresql or mariadb
	Addr string
	How  string // how to start it when it is down
	// DDL is the documented CREATE TABLE auth_keys, with its UNIQUE key;
	// LegacyDDL the Python broker's, without; Migrate adds the key to a
	// legacy table (docs/migration.md).
	DDL, LegacyDDL, Migrate string
	// URL is the --auth spec for database db on this server.
	URL func(db string) string
	// shell is the server's own client running one SQL text in db.
	shell                func(db, sql string) []string
	adminDriver, adminDB string
}

const (
	pgLegacyDDL = `CREATE SEQUENCE auth_keys_seq; CREATE TABLE auth_keys (
			id int NOT NULL DEFAULT NEXTVAL ('auth_keys_seq'),
			identifier varchar(36) DEFAULT NULL,
			secret varchar(36) DEFAULT NULL,
			publish json DEFAULT NULL,
			subscribe json DEFAULT NULL,
			PRIMARY KEY (id)`
	mariaLegacyDDL = "CREATE TABLE `auth_keys` (`id` int AUTO_INCREMENT NOT NULL, `identifier` varchar(36) DEFAULT NULL, " +
		"`secret` varchar(36) DEFAULT NULL, `publish` json DEFAULT NULL, `subscribe` json DEFAULT NULL, PRIMARY KEY (`id`)"
	// utf8mb4_bin compares bytes (but for trailing spaces), so the key
	// refuses a second "sensor" yet lets "Sensor" be another user.
	mariaIdentifier = "`identifier` varchar(36) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin DEFAULT NULL"
)

var (
	PostgreSQL = SQLServer{
		Name: "postgresql", Addr: "127.0.0.1:5432", How: "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
		DDL:       pgLegacyDDL + ", UNIQUE (identifier))",
		LegacyDDL: pgLegacyDDL + ")",
		Migrate:   "ALTER TABLE auth_keys ADD UNIQUE (identifier)",
		URL:       func(db string) string { return "database+postgresql://postgres@127.0.0.1:5432/" + db },
		shell: func(db, sql string) []string {
			return []string{"psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-c", sql}
		},
		adminDriver: "pgx", adminDB: "postgres://postgres@127.0.0.1:5432/test",
	}
	MariaDB = SQLServer{
		Name: "mariadb", Addr: "127.0.0.1:3306", How: "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd",
		DDL: strings.Replace(mariaLegacyDDL, "`identifier` varchar(36) DEFAULT NULL", mariaIdentifier, 1) +
			", UNIQUE KEY `identifier` (`identifier`))",
		LegacyDDL: mariaLegacyDDL + ")",
		Migrate:   "ALTER TABLE `auth_keys` MODIFY " + mariaIdentifier + ", ADD UNIQUE KEY `identifier` (`identifier`)",
		URL:       func(db string) string { return "database+mysql://root@127.0.0.1:3306/" + db },
		shell: func(db, sql string) []string {
			return []string{"mariadb", "-h", "127.0.0.1", "-u", "root", db, "-e", sql}
		},
		adminDriver: "mysql", adminDB: "root@tcp(127.0.0.1:3306)/test",
	}
	SQLServers = []SQLServer{PostgreSQL, MariaDB}
)

// NewDatabase creates an empty database on the server, dropped when the
// test ends, and returns its name. It fails in CI, and skips elsewhere,
// when the server does not answer.
func (s SQLServer) NewDatabase(t testing.TB) string {
	t.Helper()
	RequireService(t, s.Addr, s.How)
	admin, err := sql.Open(s.adminDriver, s.adminDB)
	if err != nil {
		t.Fatal(err)
	}
	db := fmt.Sprintf("hpfeeds_test_%d", time.Now().UnixNano())
	if _, err := admin.Exec("CREATE DATABASE " + db); err != nil {
		admin.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if s.Name == PostgreSQL.Name {
			admin.Exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '" + db + "'")
		}
		if _, err := admin.Exec("DROP DATABASE " + db); err != nil {
			t.Errorf("dropping %s: %v", db, err)
		}
		admin.Close()
	})
	return db
}

// Exec runs sql in db with the server's own command-line client, as an
// operator would.
func (s SQLServer) Exec(t testing.TB, db, sql string) {
	t.Helper()
	args := s.shell(db, sql)
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
}

// NewUserTable creates a fresh database holding the documented, empty
// auth_keys table, and returns its --auth spec.
func (s SQLServer) NewUserTable(t testing.TB) (spec, db string) {
	t.Helper()
	db = s.NewDatabase(t)
	s.Exec(t, db, s.DDL)
	return s.URL(db), db
}
