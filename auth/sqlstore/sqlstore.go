// Package sqlstore holds the credential stores kept in SQL databases:
//
//   - the SQLite store (--auth=sqlite, or a path ending .db or .sqlite; the
//     default is sqlite.db in the working directory): table
//     authkeys(id, owner, ident, secret, pubchans, subchans), created with
//     its file when Settings.Create or CreateMissing says so, channel
//     lists as JSON text;
//   - the database+ stores (--auth=database+postgresql://…,
//     database+mysql://…, database+sqlite:///rel.db,
//     database+sqlite:////abs.db): table auth_keys(id, identifier, secret,
//     publish json, subscribe json) as the documented DDL creates it; the
//     owner is the identifier and a NULL list means no channels.
//
// Every AUTH runs one query on a pooled connection, bounded by the caller's
// context; nothing is cached, so a row inserted while the broker runs works
// at the next login.
package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/hpfeeds-go/hpfeeds/auth"
)

func init() {
	openDatabase := func(_ context.Context, spec string, opts auth.Options) (auth.Store, error) {
		set, _ := auth.SettingOf[Settings](opts)
		return OpenDatabase(spec, opts.Logger, set.Create)
	}
	// Driver suffixes (database+postgresql+asyncpg) fall back to these.
	for _, scheme := range []string{"postgresql", "postgres", "mysql", "sqlite"} {
		auth.Register("database+"+scheme, openDatabase)
	}
	auth.Register(auth.KindSQLite, openSQLiteKind)
}

// dialect is what differs between the databases behind one table layout.
type dialect struct {
	table, identCol, ownerCol, secretCol, pubCol, subCol string
	placeholder                                          func(n int) string
	ddl                                                  []string // creates the table, as documented
	// collates is set where the identifier column's collation may find
	// other spellings equal (MySQL's ignores case and trailing spaces).
	collates bool
}

func question(int) string { return "?" }
func dollar(n int) string { return fmt.Sprintf("$%d", n) }

// Store is a credential store on a SQL table.
type Store struct {
	db    *sql.DB
	name  string // for logs: the spec with the password hidden
	spec  string // what --auth takes to open this store again, password hidden
	file  string // a SQLite store's absolute path, which opening never creates
	d     dialect
	sel   string // the user's columns for one identifier
	selIn string // the same, for an IN list to follow
}

// poolSize bounds the connections a store holds open. Logins beyond it wait
// for a free connection (within their lookup timeout) instead of opening
// more: a reconnect storm of hundreds of sensors would otherwise exceed the
// database's max_connections (PostgreSQL's default is 100) and half its
// logins would fail. One lookup takes well under a millisecond, so ten
// connections serve thousands of logins a second.
const poolSize = 10

func newStore(db *sql.DB, name string, d dialect) *Store {
	db.SetMaxOpenConns(poolSize)
	db.SetMaxIdleConns(poolSize)
	owner := d.ownerCol
	if owner == "" {
		owner = d.identCol
	}
	// No LIMIT 1: under a collation that ignores case or trailing spaces
	// several rows may match, and the one spelled like the AUTH ident must
	// win (see Lookup).
	sel := fmt.Sprintf("SELECT %s, %s, %s, %s, %s FROM %s WHERE %s",
		d.identCol, owner, d.secretCol, d.pubCol, d.subCol, d.table, d.identCol)
	return &Store{db: db, name: name, spec: name, d: d, sel: sel + " = " + d.placeholder(1), selIn: sel + " IN "}
}

// row is one user's columns as read.
type row struct {
	ident, owner, secret sql.NullString
	pub, sub             []byte
}

// Lookup implements auth.Store. The database compares with its collation,
// so rows spelled differently may match: the row spelled exactly as ident
// is returned if there is one, else the first, whose stored spelling makes
// auth.Find refuse the login.
func (s *Store) Lookup(ctx context.Context, ident string) (auth.User, bool, error) {
	rows, err := s.db.QueryContext(ctx, s.sel, ident)
	if err != nil {
		return auth.User{}, false, fmt.Errorf("reading table %s: %w", s.d.table, err)
	}
	defer rows.Close()
	var r row
	found := false
	for rows.Next() {
		var next row
		if err := rows.Scan(&next.ident, &next.owner, &next.secret, &next.pub, &next.sub); err != nil {
			return auth.User{}, false, fmt.Errorf("reading table %s: %w", s.d.table, err)
		}
		if !found || next.ident.String == ident {
			r, found = next, true
		}
		if r.ident.String == ident {
			break
		}
	}
	if err := rows.Err(); err != nil {
		return auth.User{}, false, fmt.Errorf("reading table %s: %w", s.d.table, err)
	}
	if !found || !r.secret.Valid || r.secret.String == "" {
		// A row without a secret can never log in; treat it as unknown.
		return auth.User{}, false, nil
	}
	return s.user(r)
}

// batchMax bounds the identifiers of one query: well under every
// database's limit on bound parameters (SQLite's was 999).
const batchMax = 500

// LookupBatch implements auth.BatchLooker: one SELECT … IN (…) per
// batchMax idents. Rows spelled otherwise than asked (collations) and rows
// without a secret are unknown, as for Lookup.
func (s *Store) LookupBatch(ctx context.Context, idents []string) (map[string]auth.User, error) {
	out := make(map[string]auth.User, len(idents))
	for len(idents) > 0 {
		n := min(len(idents), batchMax)
		if err := s.lookupBatch(ctx, idents[:n], out); err != nil {
			return nil, fmt.Errorf("reading table %s: %w", s.d.table, err)
		}
		idents = idents[n:]
	}
	return out, nil
}

func (s *Store) lookupBatch(ctx context.Context, idents []string, out map[string]auth.User) error {
	var q strings.Builder
	q.WriteString(s.selIn + "(")
	args := make([]any, len(idents))
	asked := make(map[string]bool, len(idents))
	for i, ident := range idents {
		if i > 0 {
			q.WriteString(", ")
		}
		q.WriteString(s.d.placeholder(i + 1))
		args[i] = ident
		asked[ident] = true
	}
	q.WriteString(")")
	rows, err := s.db.QueryContext(ctx, q.String(), args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.ident, &r.owner, &r.secret, &r.pub, &r.sub); err != nil {
			return err
		}
		_, dup := out[r.ident.String]
		if !asked[r.ident.String] || dup || !r.secret.Valid || r.secret.String == "" {
			continue
		}
		u, _, err := s.user(r)
		if err != nil {
			return err
		}
		out[u.Ident] = u
	}
	return rows.Err()
}

func (s *Store) user(r row) (auth.User, bool, error) {
	u := auth.User{Ident: r.ident.String, Owner: r.owner.String, Secret: r.secret.String}
	var err error
	if u.PubChans, err = parseList(r.pub); err != nil {
		return auth.User{}, false, fmt.Errorf("row for %q: %s: %w", u.Ident, s.d.pubCol, err)
	}
	if u.SubChans, err = parseList(r.sub); err != nil {
		return auth.User{}, false, fmt.Errorf("row for %q: %s: %w", u.Ident, s.d.subCol, err)
	}
	return u.WithDefaults(), true, nil
}

// parseList reads a JSON list of channels; NULL or empty means none.
func parseList(b []byte) ([]string, error) {
	if len(strings.TrimSpace(string(b))) == 0 || string(b) == "null" {
		return nil, nil
	}
	var l []string
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, fmt.Errorf("not a JSON list of channel names: %w", err)
	}
	return l, nil
}

// DuplicateIdents implements auth.DuplicateFinder. GROUP BY compares
// with the column's collation, so spellings it finds equal count as one.
func (s *Store) DuplicateIdents(ctx context.Context) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, fmt.Sprintf("SELECT MIN(%s) FROM %s WHERE %[1]s IS NOT NULL GROUP BY %[1]s HAVING COUNT(*) > 1",
		s.d.identCol, s.d.table))
	if err != nil {
		return nil, fmt.Errorf("reading table %s: %w", s.d.table, err)
	}
	defer rows.Close()
	var idents []string
	for rows.Next() {
		var ident string
		if err := rows.Scan(&ident); err != nil {
			return nil, err
		}
		idents = append(idents, ident)
	}
	return idents, rows.Err()
}

func (s *Store) String() string { return s.name }

// Check implements auth.Checker: the table and every column the broker
// reads exist. It reads no row and changes nothing.
func (s *Store) Check(ctx context.Context) error {
	if err := s.missingFile(); err != nil {
		return err
	}
	cols := []string{s.d.identCol, s.d.secretCol, s.d.pubCol, s.d.subCol}
	if s.d.ownerCol != "" {
		cols = append(cols, s.d.ownerCol)
	}
	rows, err := s.db.QueryContext(ctx, fmt.Sprintf("SELECT %s FROM %s WHERE 1 = 0", strings.Join(cols, ", "), s.d.table))
	if err != nil {
		return &auth.NotCreatedError{Spec: s.spec, Err: fmt.Errorf("table %s with columns %s: %w",
			s.d.table, strings.Join(cols, ", "), err)}
	}
	return rows.Close()
}

// Init implements auth.Initializer: it creates the documented table unless
// Check finds one already.
func (s *Store) Init(ctx context.Context) (bool, error) {
	if s.Check(ctx) == nil {
		return false, nil
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return false, err
	}
	defer tx.Rollback()
	for _, stmt := range s.d.ddl {
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			return false, fmt.Errorf("creating table %s: %w", s.d.table, err)
		}
	}
	return true, tx.Commit()
}

// Ping checks the database answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.missingFile(); err != nil {
		return err
	}
	return s.db.PingContext(ctx)
}

// missingFile says so when a SQLite store's file is not there: opening it
// creates nothing, and SQLite's own "unable to open database file" does
// not say which or why.
func (s *Store) missingFile() error {
	if s.file == "" {
		return nil
	}
	if _, err := os.Stat(s.file); errors.Is(err, fs.ErrNotExist) {
		return &auth.NotCreatedError{Err: fmt.Errorf("no SQLite database at %s", s.file), Spec: s.spec}
	}
	return nil
}

// exactIdent is the condition, and its arguments, of the rows whose
// identifier is ident byte for byte: writing a user must not replace or
// delete another row its collation finds equal ("Alice" for "alice").
func (s *Store) exactIdent(ident string) (string, []any) {
	where := s.d.identCol + " = " + s.d.placeholder(1)
	if !s.d.collates {
		return where, []any{ident}
	}
	// The first condition can use the column's index; HEX compares bytes.
	return where + " AND HEX(" + s.d.identCol + ") = HEX(" + s.d.placeholder(2) + ")", []any{ident, ident}
}

// Close closes the pool.
func (s *Store) Close() error { return s.db.Close() }

// PutUser implements auth.Editor: it replaces any row of the ident.
func (s *Store) PutUser(ctx context.Context, u auth.User) error {
	u = u.WithDefaults()
	pub, _ := json.Marshal(u.PubChans)
	sub, _ := json.Marshal(u.SubChans)
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	where, whereArgs := s.exactIdent(u.Ident)
	if _, err := tx.ExecContext(ctx, "DELETE FROM "+s.d.table+" WHERE "+where, whereArgs...); err != nil {
		return err
	}
	cols := []string{s.d.identCol, s.d.secretCol, s.d.pubCol, s.d.subCol}
	args := []any{u.Ident, u.Secret, string(pub), string(sub)}
	if s.d.ownerCol != "" {
		cols = append(cols, s.d.ownerCol)
		args = append(args, u.Owner)
	}
	ph := make([]string, len(cols))
	for i := range ph {
		ph[i] = s.d.placeholder(i + 1)
	}
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("INSERT INTO %s (%s) VALUES (%s)",
		s.d.table, strings.Join(cols, ", "), strings.Join(ph, ", ")), args...); err != nil {
		return err
	}
	return tx.Commit()
}

// DeleteUser implements auth.Editor.
func (s *Store) DeleteUser(ctx context.Context, ident string) (bool, error) {
	where, args := s.exactIdent(ident)
	res, err := s.db.ExecContext(ctx, "DELETE FROM "+s.d.table+" WHERE "+where, args...)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n > 0, err
}

// ListUsers implements auth.Editor.
func (s *Store) ListUsers(ctx context.Context) ([]auth.User, error) {
	owner := s.d.ownerCol
	if owner == "" {
		owner = s.d.identCol
	}
	rows, err := s.db.QueryContext(ctx, fmt.Sprintf("SELECT %s, %s, %s, %s, %s FROM %s ORDER BY %s",
		s.d.identCol, owner, s.d.secretCol, s.d.pubCol, s.d.subCol, s.d.table, s.d.identCol))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var users []auth.User
	for rows.Next() {
		var ident, owner, secret sql.NullString
		var pub, sub []byte
		if err := rows.Scan(&ident, &owner, &secret, &pub, &sub); err != nil {
			return nil, err
		}
		u := auth.User{Ident: ident.String, Owner: owner.String, Secret: secret.String}
		u.PubChans, _ = parseList(pub)
		u.SubChans, _ = parseList(sub)
		users = append(users, u.WithDefaults())
	}
	return users, rows.Err()
}
