package jsonfile

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/auth/storetest"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
	"github.com/hpfeeds-go/hpfeeds/internal/watch"
)

func secretOf(s *Store, ident string) string {
	u, _, _ := s.Lookup(context.Background(), ident)
	return u.Secret
}

func TestParse(t *testing.T) {
	users, err := Parse([]byte(`{"bob": {"secret": "s", "pubchans": ["a"], "extra": 1}}`))
	if err != nil {
		t.Fatal(err)
	}
	if u := users["bob"]; u.Owner != "bob" || u.Ident != "bob" || len(u.PubChans) != 1 {
		t.Errorf("got %+v", u)
	}
	for _, bad := range []string{`[]`, `{"bob": "x"}`, `{"bob": {"secret": ""}}`, `{"bob": {"secret": "s", "pubchans": "a"}}`, `{`} {
		if _, err := Parse([]byte(bad)); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

func TestReloadAtomicRenameAndBrokenFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "users.json")
	write := func(body string) {
		tmp := filepath.Join(dir, ".users.tmp")
		if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"bob": {"secret": "one"}}`)
	st, err := auth.Open(context.Background(), path, auth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	s := st.(*Store)
	if secretOf(s, "bob") != "one" {
		t.Fatal("initial load")
	}
	write(`{"bob": {"secret": "two"}, "eve": {"secret": "e"}}`)
	brokertest.Eventually(t, "reload after rename", func() bool { return secretOf(s, "bob") == "two" })

	write(`{"bob": {"secret": `) // broken: the last good users stay
	time.Sleep(4 * 100 * time.Millisecond)
	if secretOf(s, "bob") != "two" || secretOf(s, "eve") != "e" {
		t.Fatal("broken file replaced the users")
	}
	// In-place rewrite, as an editor might do.
	if err := os.WriteFile(path, []byte(`{"bob": {"secret": "three"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	brokertest.Eventually(t, "reload after in-place write", func() bool { return secretOf(s, "bob") == "three" })
	if _, found, _ := s.Lookup(context.Background(), "eve"); found {
		t.Error("removed user still found")
	}
}

// A Kubernetes secret volume: users.json -> ..data/users.json, and ..data is
// a symlink swapped atomically to a new timestamped directory.
func TestReloadKubernetesSymlinkSwap(t *testing.T) {
	dir := t.TempDir()
	mk := func(name, body string) {
		if err := os.MkdirAll(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "users.json"), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	mk("..2026_01", `{"bob": {"secret": "old"}}`)
	if err := os.Symlink("..2026_01", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "users.json")
	if err := os.Symlink("..data/users.json", path); err != nil {
		t.Fatal(err)
	}
	s, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	mk("..2026_02", `{"bob": {"secret": "new"}}`)
	if err := os.Symlink("..2026_02", filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	brokertest.Eventually(t, "reload after symlink swap", func() bool { return secretOf(s, "bob") == "new" })
}

func TestOpenRefusesMissingOrBrokenFile(t *testing.T) {
	dir := t.TempDir()
	if _, err := Open(filepath.Join(dir, "missing.json"), nil); err == nil {
		t.Error("missing file accepted")
	}
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte("{"), 0o600)
	if _, err := Open(bad, nil); err == nil {
		t.Error("broken file accepted")
	}
}

func TestEditorRewritesAtomically(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "users.json")
	if err := os.WriteFile(path, []byte(`{"bob": {"secret": "b"}}`), 0o640); err != nil {
		t.Fatal(err)
	}
	s, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// A second store on the same file stands for a running broker.
	broker, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer broker.Close()
	ctx := context.Background()
	if err := s.PutUser(ctx, auth.User{Ident: "eve", Secret: "e", PubChans: []string{"c"}}); err != nil {
		t.Fatal(err)
	}
	brokertest.Eventually(t, "broker reload after add", func() bool { return secretOf(broker, "eve") == "e" })
	if info, _ := os.Stat(path); info.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640", info.Mode().Perm())
	}
	users, _ := s.ListUsers(ctx)
	if len(users) != 2 || users[0].Ident != "bob" || users[1].Ident != "eve" || users[1].Owner != "eve" {
		t.Errorf("list %+v", users)
	}
	if found, err := s.DeleteUser(ctx, "bob"); !found || err != nil {
		t.Fatal(found, err)
	}
	brokertest.Eventually(t, "broker reload after remove", func() bool { _, found, _ := broker.Lookup(ctx, "bob"); return !found })
	// The rewritten file is one the Python broker reads: every key present.
	data, _ := os.ReadFile(path)
	for _, k := range []string{`"owner"`, `"secret"`, `"pubchans"`, `"subchans"`} {
		if !strings.Contains(string(data), k) {
			t.Errorf("rewritten file lacks %s:\n%s", k, data)
		}
	}
}

// A user written through the store is not reloaded again when the watch
// sees the file change: the store knows it already.
func TestEditDoesNotReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users.json")
	if err := os.WriteFile(path, []byte(`{"bob": {"secret": "one"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	log := &brokertest.Log{}
	st, err := Open(path, log.Logger())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.PutUser(context.Background(), auth.User{Ident: "alice", Secret: "a"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * watch.Debounce) // the watch's turn to see the rename
	// An edit by another program is reloaded: once it is seen, so was ours.
	if err := os.WriteFile(path, []byte(`{"carol": {"secret": "c"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	brokertest.Eventually(t, "the outside edit", func() bool { return secretOf(st, "carol") == "c" })
	if n := log.Count("user file reloaded"); n != 1 {
		t.Errorf("%d reloads for one edit through the store and one outside it, want 1:\n%s", n, log)
	}
}

// Revalidation asks the file's users many at a time, from memory.
func TestLookupBatch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users.json")
	os.WriteFile(path, []byte(`{}`), 0o600)
	s, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	storetest.Batch(t, s, 1200, func(_ context.Context, users []auth.User) error {
		m := map[string]auth.User{}
		for _, u := range users {
			m[u.Ident] = u
		}
		b, _ := json.Marshal(m)
		if err := os.WriteFile(path, b, 0o600); err != nil {
			return err
		}
		return s.Reload()
	})
}
