package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx"
	_ "modernc.org/sqlite"             // registers "sqlite", pure Go

	"github.com/hpfeeds-go/hpfeeds/auth"
)

// authkeysDDL is the Python broker's SQLite table, with a UNIQUE ident
// (SQLite compares text byte for byte) so no ident has two rows.
const authkeysDDL = `CREATE TABLE authkeys (id INTEGER PRIMARY KEY AUTOINCREMENT,
    owner TEXT, ident TEXT UNIQUE, secret TEXT, pubchans TEXT, subchans TEXT)`

// The documented auth_keys tables of docs/stores.md, with the UNIQUE key
// on identifier (binary collation on MySQL/MariaDB), one statement each;
// `hpfeeds-broker user init` runs them. A test holds the docs to them.
var (
	PostgreSQLDDL = []string{"CREATE SEQUENCE auth_keys_seq", `CREATE TABLE auth_keys (
  id int NOT NULL DEFAULT NEXTVAL ('auth_keys_seq'),
  identifier varchar(36) DEFAULT NULL,
  secret varchar(36) DEFAULT NULL,
  publish json DEFAULT NULL,
  subscribe json DEFAULT NULL,
  PRIMARY KEY (id),
  UNIQUE (identifier)
)`}
	MySQLDDL = []string{"CREATE TABLE `auth_keys` (\n" +
		"  `id` int AUTO_INCREMENT NOT NULL,\n" +
		"  `identifier` varchar(36) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin DEFAULT NULL,\n" +
		"  `secret` varchar(36) DEFAULT NULL,\n" +
		"  `publish` json DEFAULT NULL,\n" +
		"  `subscribe` json DEFAULT NULL,\n" +
		"  PRIMARY KEY (`id`),\n" +
		"  UNIQUE KEY `identifier` (`identifier`)\n" +
		")"}
	// SQLiteDDL is auth_keys for database+sqlite: INTEGER PRIMARY KEY is
	// what makes SQLite number the rows (the MySQL DDL's "int
	// AUTO_INCREMENT" does not, so its INSERTs fail on a NULL id).
	SQLiteDDL = []string{`CREATE TABLE auth_keys (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  identifier varchar(36) DEFAULT NULL,
  secret varchar(36) DEFAULT NULL,
  publish json DEFAULT NULL,
  subscribe json DEFAULT NULL,
  UNIQUE (identifier)
)`}
	AuthkeysDDL = []string{authkeysDDL}
)

// Settings are the SQL stores' settings; pass them to auth.Open in
// Options.Settings.
type Settings struct {
	// Create lets a SQLite store create its database file, and the
	// authkeys table of --auth=sqlite. Only `hpfeeds-broker user add` and
	// `user init` set it: a broker started in the wrong directory must
	// not leave an empty database its operator then fills in vain.
	Create bool
	// CreateMissing is the broker's start-up: a --auth=sqlite or .db/.sqlite
	// store whose file is missing (or empty) in a directory that exists is
	// created with its authkeys table, as the Python broker did, and
	// logged once at INFO. database+sqlite URLs are only opened.
	CreateMissing bool
}

// Creatable reports whether a --auth=sqlite or .db/.sqlite spec names a
// file that CreateMissing would create: missing or empty, in a directory
// that exists. abs is the file's absolute path.
func Creatable(spec string) (abs string, ok bool) {
	if auth.Kind(spec) != auth.KindSQLite {
		return "", false
	}
	if spec == auth.KindSQLite {
		spec = "sqlite.db"
	}
	abs, err := filepath.Abs(spec)
	if err != nil {
		return "", false
	}
	if fi, err := os.Stat(abs); err == nil && (!fi.Mode().IsRegular() || fi.Size() > 0) || err != nil && !errors.Is(err, fs.ErrNotExist) {
		return abs, false
	}
	dir, err := os.Stat(filepath.Dir(abs))
	return abs, err == nil && dir.IsDir()
}

// openSQLiteKind opens a --auth=sqlite or .db/.sqlite store, creating it
// first if the settings allow.
func openSQLiteKind(ctx context.Context, spec string, opts auth.Options) (auth.Store, error) {
	set, _ := auth.SettingOf[Settings](opts)
	abs, creatable := Creatable(spec)
	if spec == auth.KindSQLite {
		spec = "sqlite.db"
	}
	if !set.CreateMissing || !creatable {
		return OpenSQLite(ctx, spec, set.Create)
	}
	// Secrets: readable by the broker's user only (SQLite would use 0644).
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("creating SQLite database %s: %w", abs, err)
	}
	f.Close()
	s, err := OpenSQLite(ctx, abs, true)
	if err != nil {
		return nil, err
	}
	if _, err := s.Init(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("creating the authkeys table in %s: %w", abs, err)
	}
	opts.Logger.Info("created empty credential store", "path", abs)
	return s, nil
}

// HasUsers reports whether the table holds at least one row, reading one.
func (s *Store) HasUsers(ctx context.Context) (bool, error) {
	var one int
	err := s.db.QueryRowContext(ctx, "SELECT 1 FROM "+s.d.table+" LIMIT 1").Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

// sqliteDSN opens a SQLite file so that the broker and an operator's
// sqlite3 shell can both use it: writers wait rather than fail. Only with
// create does opening make a missing file.
func sqliteDSN(path string, create bool) string {
	mode := "rw"
	if create {
		mode = "rwc"
	}
	return "file:" + path + "?mode=" + mode + "&_pragma=busy_timeout(5000)"
}

// OpenSQLite opens the SQLite file at path. Without create, the file and
// its authkeys table must exist; with create, the file is made at the
// first use if missing, and Init makes the table. The store is named by
// the file's absolute path.
func OpenSQLite(ctx context.Context, path string, create bool) (*Store, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(abs); err != nil && !create {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, &auth.NotCreatedError{Err: fmt.Errorf("no SQLite database at %s", abs), Spec: path}
		}
		return nil, fmt.Errorf("SQLite database %s: %w", abs, err)
	}
	db, err := sql.Open("sqlite", sqliteDSN(abs, create))
	if err != nil {
		return nil, err
	}
	s := newStore(db, "sqlite:"+abs, dialect{
		table: "authkeys", identCol: "ident", ownerCol: "owner", secretCol: "secret",
		pubCol: "pubchans", subCol: "subchans", placeholder: question, ddl: AuthkeysDDL,
	})
	s.file, s.spec = abs, abs
	if !create {
		if err := s.Check(ctx); err != nil {
			db.Close()
			return nil, err
		}
	}
	return s, nil
}

// OpenDatabase opens a database+ store. It does not connect: a database
// that is down at start-up only fails logins until it answers.
// The MySQL driver's own messages (a dropped connection, say) go to log at
// debug level: the broker's one line per failed lookup already says it.
func OpenDatabase(spec string, log *slog.Logger, create bool) (*Store, error) {
	driver, dsn, err := DSN(spec)
	if err != nil {
		return nil, err
	}
	name, file := auth.Redact(spec), ""
	if driver == "sqlite" {
		path := sqlitePath(spec)
		abs, err := filepath.Abs(path)
		if err != nil {
			return nil, err
		}
		// Named by the absolute path, as SQLAlchemy writes it: four slashes.
		name, dsn, file = "database+sqlite:///"+abs, sqliteDSN(abs, create), abs
	}
	var db *sql.DB
	if driver == "mysql" {
		cfg, err := mysql.ParseDSN(dsn)
		if err != nil {
			return nil, err
		}
		cfg.Logger = driverLog{log}
		connector, err := mysql.NewConnector(cfg)
		if err != nil {
			return nil, err
		}
		db = sql.OpenDB(connector)
	} else if db, err = sql.Open(driver, dsn); err != nil {
		return nil, err
	}
	d := dialect{
		table: "auth_keys", identCol: "identifier", secretCol: "secret",
		pubCol: "publish", subCol: "subscribe", placeholder: question,
	}
	switch driver {
	case "pgx":
		d.placeholder, d.ddl = dollar, PostgreSQLDDL
	case "mysql":
		d.ddl, d.collates = MySQLDDL, true
	case "sqlite":
		d.ddl = SQLiteDDL
	}
	s := newStore(db, name, d)
	s.file = file
	return s, nil
}

// DSN translates a database+ URL, as the Python broker's databases library
// takes it, into a Go driver name and that driver's DSN.
func DSN(spec string) (driver, dsn string, err error) {
	rest, ok := strings.CutPrefix(spec, "database+")
	if !ok {
		return "", "", errors.New("not a database+ URL")
	}
	scheme, _, ok := strings.Cut(rest, "://")
	if !ok {
		// Not a URL, so Redact cannot find a password in it: show only
		// what comes before the first colon.
		scheme, _, _ := strings.Cut(rest, ":")
		return "", "", fmt.Errorf("database+%s…: want database+SCHEME://USER:PASSWORD@HOST/DB", scheme)
	}
	// "postgresql+asyncpg" and the like name a Python driver: drop it.
	scheme, _, _ = strings.Cut(scheme, "+")
	switch scheme {
	case "postgresql", "postgres":
		u, err := parseURL(rest)
		if err != nil {
			return "", "", err
		}
		u.Scheme = "postgres"
		return "pgx", u.String(), nil
	case "mysql":
		return mysqlDSN(rest)
	case "sqlite":
		path := sqlitePath(spec)
		if path == "" {
			return "", "", errors.New("no database file (want database+sqlite:///file.db)")
		}
		return "sqlite", sqliteDSN(path, false), nil
	}
	return "", "", fmt.Errorf("unsupported database %q (use postgresql, mysql or sqlite)", scheme)
}

// sqlitePath is the file of a database+sqlite URL: sqlite:///relative.db
// and sqlite:////absolute.db, as SQLAlchemy has them.
func sqlitePath(spec string) string {
	_, rest, _ := strings.Cut(spec, "://")
	path, _, _ := strings.Cut(strings.TrimPrefix(rest, "/"), "?")
	return path
}

// parseURL parses the URL after "database+". url.Parse quotes the whole URL,
// password included, in its errors: only the reason is kept.
func parseURL(rest string) (*url.URL, error) {
	u, err := url.Parse(rest)
	if uerr, ok := err.(*url.Error); ok {
		err = uerr.Err
	}
	if err != nil {
		return nil, fmt.Errorf("not a URL: %w", err)
	}
	return u, nil
}

func mysqlDSN(rest string) (string, string, error) {
	u, err := parseURL(rest)
	if err != nil {
		return "", "", err
	}
	cfg := mysql.NewConfig()
	cfg.User = u.User.Username()
	cfg.Passwd, _ = u.User.Password()
	cfg.Net = "tcp"
	host, port := u.Hostname(), u.Port()
	if host == "" {
		host = "localhost"
	}
	if port == "" {
		port = "3306"
	}
	cfg.Addr = net.JoinHostPort(host, port)
	cfg.DBName = strings.TrimPrefix(u.Path, "/")
	pass := url.Values{}
	for k, vs := range u.Query() {
		v := vs[len(vs)-1]
		switch k {
		case "unix_socket": // aiomysql's names for what the Go driver spells differently
			cfg.Net, cfg.Addr = "unix", v
		case "ssl":
			if v == "true" || v == "1" {
				cfg.TLSConfig = "true"
			}
		default: // charset, tls, timeout, …: the Go driver's own options
			pass.Set(k, v)
		}
	}
	dsn := cfg.FormatDSN()
	if len(pass) > 0 {
		sep := "?"
		if strings.Contains(dsn, "?") {
			sep = "&"
		}
		dsn += sep + pass.Encode()
	}
	if _, err := mysql.ParseDSN(dsn); err != nil {
		return "", "", err
	}
	return "mysql", dsn, nil
}

// driverLog hands the MySQL driver's messages to the broker's logger.
type driverLog struct{ log *slog.Logger }

func (l driverLog) Print(v ...any) { l.log.Debug("mysql driver: " + fmt.Sprint(v...)) }
