package auth_test

import (
	"context"
	"errors"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hpfeeds-go/hpfeeds/auth"
	_ "github.com/hpfeeds-go/hpfeeds/auth/env"
	_ "github.com/hpfeeds-go/hpfeeds/auth/jsonfile"
	"github.com/hpfeeds-go/hpfeeds/auth/mongostore"
	"github.com/hpfeeds-go/hpfeeds/auth/sqlstore"
)

// table checks f against cases, input to want.
func table(t *testing.T, name string, f func(string) string, cases map[string]string) {
	t.Helper()
	for in, want := range cases {
		if got := f(in); got != want {
			t.Errorf("%s(%q) = %q, want %q", name, in, got, want)
		}
	}
}

func TestKind(t *testing.T) {
	table(t, "Kind", auth.Kind, map[string]string{
		"env":                                 auth.KindEnv,
		"sqlite":                              auth.KindSQLite,
		"users.json":                          auth.KindJSON,
		"/etc/hpfeeds/users.json":             auth.KindJSON,
		"/srv/a://b/users.json":               auth.KindJSON, // not a scheme before ://
		"sqlite.db":                           auth.KindSQLite,
		"var/users.sqlite":                    auth.KindSQLite,
		"database+sqlite:///users.json":       "database+sqlite",
		"database+postgresql://u:p@h/db.json": "database+postgresql",
		"mongodb://h/hpfeeds?appName=a.json":  "mongodb",
		"mongodb+srv://h/hpfeeds?x=users.db":  "mongodb+srv",
		"nosuchstore":                         "nosuchstore",
	})
}

// The URL scheme decides, whatever the spec ends with: before the registry
// was keyed by scheme, both of these opened the JSON store.
func TestOpenBySchemeNotSuffix(t *testing.T) {
	dir := t.TempDir()
	st, err := auth.Open(context.Background(), "database+sqlite:///"+filepath.Join(dir, "users.json"), auth.Options{})
	if err != nil {
		t.Fatalf("database+sqlite with a .json file name: %v", err)
	}
	st.Close()
	if _, ok := st.(*sqlstore.Store); !ok {
		t.Errorf("database+sqlite:///…/users.json opened %T, want the SQL store", st)
	}

	st, err = auth.Open(context.Background(), "mongodb://127.0.0.1:1/hpfeeds?appName=users.json", auth.Options{})
	if err != nil {
		t.Fatalf("mongodb URI ending .json: %v", err)
	}
	st.Close()
	if _, ok := st.(*mongostore.Store); !ok {
		t.Errorf("a mongodb URI ending .json opened %T, want the Mongo store", st)
	}
}

func TestOpenUnknown(t *testing.T) {
	for _, spec := range []string{"nosuchstore", "sqlite:///x.db", "json://users.json", "database+oracle://h/db"} {
		_, err := auth.Open(context.Background(), spec, auth.Options{})
		if err == nil || !strings.Contains(err.Error(), "not a credential store") || !strings.Contains(err.Error(), "mongodb://") {
			t.Errorf("%s: %v", spec, err)
		}
	}
	// A Python driver suffix falls back to the database it is for.
	_, err := auth.Open(context.Background(), "database+postgresql+asyncpg://u@127.0.0.1:1/db", auth.Options{})
	if err != nil {
		t.Errorf("database+postgresql+asyncpg: %v", err)
	}
}

func TestRegisterTwicePanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("registering env twice did not panic")
		}
	}()
	auth.Register(auth.KindEnv, func(context.Context, string, auth.Options) (auth.Store, error) { return nil, nil })
}

func TestRedact(t *testing.T) {
	table(t, "Redact", auth.Redact, map[string]string{
		"mongodb://u:s3cret@h1,h2/db?authSource=admin": "mongodb://u:xxxxx@h1,h2/db?authSource=admin",
		"database+mysql://root@h/db":                   "database+mysql://root@h/db",
		"database+postgresql://u:@h/db":                "database+postgresql://u:xxxxx@h/db",
		"nats://h:4222":                                "nats://h:4222",
		"/etc/users.json":                              "/etc/users.json",
	})
}

func TestRedactError(t *testing.T) {
	spec := "mongodb://u:p%40ss@h1,h2/db?authSource=admin"
	err := auth.RedactError(&fs.PathError{Op: "dial", Path: "u:p%40ss and p@ss", Err: fs.ErrNotExist}, spec)
	if strings.Contains(err.Error(), "p%40ss") || strings.Contains(err.Error(), "p@ss") {
		t.Errorf("password left in %q", err)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("cause lost: %v", err)
	}
	plain := errors.New("no password here")
	if auth.RedactError(plain, spec) != plain {
		t.Error("an error without the password was wrapped")
	}
}

func TestWithDefaults(t *testing.T) {
	u := auth.User{Ident: "a"}.WithDefaults()
	if u.Owner != "a" || u.PubChans == nil || u.SubChans == nil || len(u.PubChans)+len(u.SubChans) != 0 {
		t.Errorf("%+v", u)
	}
	u = auth.User{Ident: "a", Owner: "o", PubChans: []string{"p"}}.WithDefaults()
	if u.Owner != "o" || u.PubChans[0] != "p" {
		t.Errorf("%+v", u)
	}
}

// mapStore is a store in memory that batches, or fails every lookup.
type mapStore struct {
	users map[string]auth.User
	err   error
}

func (s mapStore) Lookup(_ context.Context, ident string) (auth.User, bool, error) {
	u, ok := s.users[ident]
	return u, ok, s.err
}

func (s mapStore) LookupBatch(ctx context.Context, idents []string) (map[string]auth.User, error) {
	if s.err != nil {
		return nil, s.err
	}
	return auth.LookupEach(ctx, s, idents)
}

func (mapStore) String() string { return "map" }
func (mapStore) Close() error   { return nil }

// onlyLookup is a store that cannot batch.
type onlyLookup struct{ auth.Store }

// A chain batches when each of its stores does: each is asked for what the
// ones before it did not know, and a store's failure matters only when an
// ident stays unknown, as for Lookup.
func TestChainLookupBatch(t *testing.T) {
	a := mapStore{users: map[string]auth.User{"a": {Ident: "a", Secret: "1"}}}
	b := mapStore{users: map[string]auth.User{"a": {Ident: "a", Secret: "2"}, "b": {Ident: "b", Secret: "3"}}}
	down := mapStore{err: errors.New("down")}
	ctx := context.Background()
	got, err := auth.Chain{a, down, b}.LookupBatch(ctx, []string{"a", "b", "c"})
	if err == nil {
		t.Errorf("c unknown to every store that answered, one down: got %v, want the failure", got)
	}
	got, err = auth.Chain{a, b, down}.LookupBatch(ctx, []string{"a", "b"})
	if err != nil || len(got) != 2 || got["a"].Secret != "1" || got["b"].Secret != "3" {
		t.Errorf("got %v, %v; want a from the first store, b from the second", got, err)
	}
	if _, err := (auth.Chain{a, onlyLookup{b}}).LookupBatch(ctx, nil); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("a chain with a store that cannot batch: %v, want ErrUnsupported", err)
	}
}
