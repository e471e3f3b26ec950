// Package jsonfile is the credential store kept in a JSON file
// (--auth=/path/users.json):
//
//	{"bob": {"owner": "bob", "secret": "s3cret", "pubchans": ["chan1"], "subchans": []}}
//
// The file is reloaded when it changes, including by an atomic rename or a
// Kubernetes secret's symlink swap. A broken file is refused whole and the
// last good users are kept.
package jsonfile

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/internal/watch"
)

func init() {
	auth.Register(auth.KindJSON, func(_ context.Context, spec string, opts auth.Options) (auth.Store, error) {
		return Open(spec, opts.Logger)
	})
}

// Store serves users from the last good version of a JSON file.
type Store struct {
	path  string
	log   *slog.Logger
	users atomic.Pointer[map[string]auth.User]
	stop  func()

	mu   sync.Mutex // serialises reloads and edits
	last []byte     // contents last loaded, to skip no-op reloads
}

// Open loads path and starts watching it. A missing or broken file at start
// is an error: the operator should hear about it before anyone logs in.
func Open(path string, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.Default()
	}
	// Named by its absolute path in logs and `user` output: a relative one
	// says nothing about which file a command or broker used.
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	s := &Store{path: path, log: log}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading user file: %w", err)
	}
	users, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	s.users.Store(&users)
	s.last = data

	stop, err := watch.Files(log, []string{path}, s.reload)
	if err != nil {
		log.Warn("cannot watch user file; changes need a restart or SIGHUP", "path", path, "err", err)
		stop = func() {}
	}
	s.stop = stop
	return s, nil
}

// reload is the watch's callback: it logs what changed.
func (s *Store) reload() {
	n, changed, err := s.load()
	switch {
	case err != nil:
		s.log.Error("user file not loaded; keeping the last good users", "path", s.path, "err", err)
	case changed:
		s.log.Info("user file reloaded", "path", s.path, "users", n)
	}
}

// Reload re-reads the file now (as on SIGHUP). A file that is unreadable
// or broken keeps the last good users and is the error.
func (s *Store) Reload() error {
	_, _, err := s.load()
	return err
}

// load reads the file and swaps in its users if it changed and parses.
func (s *Store) load() (users int, changed bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	data, err := os.ReadFile(s.path)
	if err != nil {
		return 0, false, fmt.Errorf("user file unreadable: %w", err)
	}
	if bytes.Equal(data, s.last) {
		return len(*s.users.Load()), false, nil
	}
	m, err := Parse(data)
	if err != nil {
		return 0, false, fmt.Errorf("user file is broken: %s: %w", s.path, err)
	}
	s.users.Store(&m)
	s.last = data
	return len(m), true, nil
}

// Parse decodes and validates a whole user file. Unlike the Python broker,
// owner may be omitted (it defaults to the ident) and so may empty channel
// lists, and unknown fields are ignored; any other defect rejects the whole file.
func Parse(data []byte) (map[string]auth.User, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("not a JSON object of users: %w", err)
	}
	users := make(map[string]auth.User, len(raw))
	for ident, entry := range raw {
		if ident == "" {
			return nil, fmt.Errorf("a user has an empty ident")
		}
		var u auth.User
		if err := json.Unmarshal(entry, &u); err != nil {
			return nil, fmt.Errorf("user %q: %w", ident, err)
		}
		if u.Secret == "" {
			return nil, fmt.Errorf("user %q has no secret", ident)
		}
		u.Ident = ident
		users[ident] = u.WithDefaults()
	}
	return users, nil
}

// Lookup implements auth.Store.
func (s *Store) Lookup(_ context.Context, ident string) (auth.User, bool, error) {
	u, ok := (*s.users.Load())[ident]
	return u, ok, nil
}

// LookupBatch implements auth.BatchLooker from the file's users in memory.
func (s *Store) LookupBatch(ctx context.Context, idents []string) (map[string]auth.User, error) {
	return auth.LookupEach(ctx, s, idents)
}

func (s *Store) String() string { return "json:" + s.path }

// Close stops watching the file.
func (s *Store) Close() error {
	s.stop()
	return nil
}

// edit rewrites the file with change applied to its users, atomically
// (a temporary file in the same directory, renamed over it) and keeping
// its mode, so a running broker reloads it whole.
func (s *Store) edit(change func(map[string]auth.User)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	data, err := os.ReadFile(s.path)
	if err != nil {
		return err
	}
	users, err := Parse(data)
	if err != nil {
		return fmt.Errorf("%s: %w", s.path, err)
	}
	change(users)
	out, err := json.MarshalIndent(users, "", "  ")
	if err != nil {
		return err
	}
	info, err := os.Stat(s.path)
	if err != nil {
		return err
	}
	target, err := filepath.EvalSymlinks(s.path)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(target), ".users-*.json")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	out = append(out, '\n')
	if _, err := tmp.Write(out); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(info.Mode().Perm()); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), target); err != nil {
		return err
	}
	s.users.Store(&users)
	s.last = out // the watch sees this rename: nothing to reload
	return nil
}

// PutUser implements auth.Editor.
func (s *Store) PutUser(_ context.Context, u auth.User) error {
	u = u.WithDefaults()
	return s.edit(func(m map[string]auth.User) { m[u.Ident] = u })
}

// DeleteUser implements auth.Editor.
func (s *Store) DeleteUser(_ context.Context, ident string) (bool, error) {
	found := false
	err := s.edit(func(m map[string]auth.User) {
		_, found = m[ident]
		delete(m, ident)
	})
	return found, err
}

// ListUsers implements auth.Editor.
func (s *Store) ListUsers(context.Context) ([]auth.User, error) {
	m := *s.users.Load()
	out := make([]auth.User, 0, len(m))
	for _, u := range m {
		out = append(out, u)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Ident < out[j].Ident })
	return out, nil
}
