// Package auth defines the credential store a broker asks on every AUTH, and
// the registry that opens a store from an --auth spec.
//
// Stores register themselves by name from their own packages, the way
// database/sql drivers do; a program imports the ones it wants to offer.
package auth

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"github.com/hpfeeds-go/hpfeeds/wire"
)

// User is one credential: who may log in with which secret, and the
// channels they may publish to and subscribe to.
type User struct {
	Ident    string   `json:"-"`
	Owner    string   `json:"owner,omitempty"`
	Secret   string   `json:"secret"`
	PubChans []string `json:"pubchans"`
	SubChans []string `json:"subchans"`
}

// Verify reports, in constant time, whether hash is SHA1(nonce ‖ secret).
func (u *User) Verify(nonce, hash []byte) bool {
	want := wire.Hash(nonce, []byte(u.Secret))
	return subtle.ConstantTimeCompare(want[:], hash) == 1
}

// Store answers ident → user. It is safe for concurrent use.
type Store interface {
	// Lookup returns the user, or found=false when the store does not know
	// the ident. An error means the store could not answer (down, timed
	// out, corrupt row); it is never cached by the caller.
	Lookup(ctx context.Context, ident string) (u User, found bool, err error)
	// String names the store for logs; it never includes a password.
	String() string
	Close() error
}

// Editor is a store whose users can be managed from the command line.
type Editor interface {
	Store
	// PutUser creates or replaces the user with u.Ident.
	PutUser(ctx context.Context, u User) error
	// DeleteUser removes ident, reporting whether it existed.
	DeleteUser(ctx context.Context, ident string) (bool, error)
	// ListUsers returns every user, sorted by ident.
	ListUsers(ctx context.Context) ([]User, error)
}

// Options are what a store may need besides its spec.
type Options struct {
	Logger *slog.Logger
	// MongoCollection overrides the MongoDB collection (default auth_key).
	MongoCollection string
}

// Driver opens stores for the specs it claims.
type Driver struct {
	// Name is used in error messages and docs ("env", "json", "sqlite"…).
	Name string
	// Match reports whether spec is for this driver.
	Match func(spec string) bool
	// Open opens a store. It should not fail merely because a database is
	// unreachable at start-up (the database may start after the broker); Ping
	// is how a caller checks reachability.
	Open func(ctx context.Context, spec string, opts Options) (Store, error)
}

// Pinger is implemented by stores that can check they are reachable.
type Pinger interface {
	Ping(ctx context.Context) error
}

var (
	mu      sync.RWMutex
	drivers []Driver
)

// Register makes a driver available to Open. Drivers are tried in the order
// they registered, so a catch-all must register last.
func Register(d Driver) {
	mu.Lock()
	defer mu.Unlock()
	drivers = append(drivers, d)
}

// Drivers lists the names of registered drivers.
func Drivers() []string {
	mu.RLock()
	defer mu.RUnlock()
	var names []string
	for _, d := range drivers {
		names = append(names, d.Name)
	}
	return names
}

// Open opens the store for one --auth spec.
func Open(ctx context.Context, spec string, opts Options) (Store, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	mu.RLock()
	ds := slices.Clone(drivers)
	mu.RUnlock()
	for _, d := range ds {
		if d.Match(spec) {
			s, err := d.Open(ctx, spec, opts)
			if err != nil {
				return nil, fmt.Errorf("--auth=%s: %w", Redact(spec), err)
			}
			return s, nil
		}
	}
	return nil, fmt.Errorf("--auth=%s: not a credential store this broker knows (use one of: %s)",
		Redact(spec), strings.Join(Drivers(), ", "))
}

// Redact hides the password of a URL-shaped spec, for logs and errors.
func Redact(spec string) string {
	scheme, rest, ok := strings.Cut(spec, "://")
	if !ok {
		return spec
	}
	hostEnd := strings.IndexAny(rest, "/?")
	if hostEnd < 0 {
		hostEnd = len(rest)
	}
	at := strings.LastIndex(rest[:hostEnd], "@")
	if at < 0 {
		return spec
	}
	userinfo := rest[:at]
	if user, _, hasPass := strings.Cut(userinfo, ":"); hasPass {
		userinfo = user + ":xxxxx"
	}
	return scheme + "://" + userinfo + rest[at:]
}

// Chain asks stores in order; the first that knows the ident answers.
type Chain []Store

// Lookup implements Store. A store that fails does not stop the chain: a
// later store that knows the ident still answers. If none knows it and one
// failed, the failure is returned so the login is reported as a store error.
func (c Chain) Lookup(ctx context.Context, ident string) (User, bool, error) {
	var errs []error
	for _, s := range c {
		u, found, err := s.Lookup(ctx, ident)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", s, err))
			continue
		}
		if found {
			return u, true, nil
		}
	}
	return User{}, false, errors.Join(errs...)
}

func (c Chain) String() string {
	names := make([]string, len(c))
	for i, s := range c {
		names[i] = s.String()
	}
	return strings.Join(names, ", ")
}

// Close closes every store.
func (c Chain) Close() error {
	var errs []error
	for _, s := range c {
		errs = append(errs, s.Close())
	}
	return errors.Join(errs...)
}

// Ping checks every store that can be checked.
func (c Chain) Ping(ctx context.Context) error {
	var errs []error
	for _, s := range c {
		if p, ok := s.(Pinger); ok {
			if err := p.Ping(ctx); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", s, err))
			}
		}
	}
	return errors.Join(errs...)
}

// SplitList parses a comma-separated channel list, dropping blanks.
func SplitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
