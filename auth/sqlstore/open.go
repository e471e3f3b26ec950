package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"

	"github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx"
	_ "modernc.org/sqlite"             // registers "sqlite", pure Go

	"github.com/hpfeeds-go/hpfeeds/auth"
)

// authkeysDDL is the Python broker's SQLite table, with a UNIQUE ident
// (SQLite compares text byte for byte) so no ident has two rows.
const authkeysDDL = `CREATE TABLE IF NOT EXISTS authkeys (
	id INTEGER PRIMARY KEY AUTOINCREMENT,
	owner TEXT, ident TEXT UNIQUE, secret TEXT, pubchans TEXT, subchans TEXT)`

// sqliteDSN opens a SQLite file so that the broker and an operator's
// sqlite3 shell can both use it: writers wait rather than fail.
func sqliteDSN(path string) string {
	return "file:" + path + "?_pragma=busy_timeout(5000)"
}

// OpenSQLite opens (creating if needed) the SQLite file at path with the
// authkeys table.
func OpenSQLite(ctx context.Context, path string) (*Store, error) {
	db, err := sql.Open("sqlite", sqliteDSN(path))
	if err != nil {
		return nil, err
	}
	if _, err := db.ExecContext(ctx, authkeysDDL); err != nil {
		db.Close()
		return nil, fmt.Errorf("creating table authkeys in %s: %w", path, err)
	}
	return newStore(db, "sqlite:"+path, dialect{
		table: "authkeys", identCol: "ident", ownerCol: "owner", secretCol: "secret",
		pubCol: "pubchans", subCol: "subchans", placeholder: question,
	}), nil
}

// OpenDatabase opens a database+ store. It does not connect: a database
// that is down at start-up only fails logins until it answers.
// The MySQL driver's own messages (a dropped connection, say) go to log at
// debug level: the broker's one line per failed lookup already says it.
func OpenDatabase(spec string, log *slog.Logger) (*Store, error) {
	driver, dsn, err := DSN(spec)
	if err != nil {
		return nil, err
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
	ph := question
	if driver == "pgx" {
		ph = dollar
	}
	return newStore(db, auth.Redact(spec), dialect{
		table: "auth_keys", identCol: "identifier", secretCol: "secret",
		pubCol: "publish", subCol: "subscribe", placeholder: ph,
	}), nil
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
		// sqlite:///relative.db and sqlite:////absolute.db, as SQLAlchemy.
		path := strings.TrimPrefix(rest[len(scheme)+len("://"):], "/")
		path, _, _ = strings.Cut(path, "?")
		if path == "" {
			return "", "", errors.New("no database file (want database+sqlite:///file.db)")
		}
		return "sqlite", sqliteDSN(path), nil
	}
	return "", "", fmt.Errorf("unsupported database %q (use postgresql, mysql or sqlite)", scheme)
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
