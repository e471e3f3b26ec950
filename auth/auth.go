// Package auth defines the credential store a broker asks on every AUTH, and
// the registry that opens a store from a spec (a URL, a path or a name).
//
// Stores register themselves by URL scheme or kind from their own packages,
// the way database/sql drivers do; a program imports the ones it wants to
// offer. Kind is the one place that decides which store a spec is for.
package auth

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
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

// WithDefaults returns u as every store hands it out: the owner is the ident
// when not given, and a missing channel list is an empty one (never nil, so
// it is written as [] and not null).
func (u User) WithDefaults() User {
	if u.Owner == "" {
		u.Owner = u.Ident
	}
	if u.PubChans == nil {
		u.PubChans = []string{}
	}
	if u.SubChans == nil {
		u.SubChans = []string{}
	}
	return u
}

// Store answers ident → user. It is safe for concurrent use.
type Store interface {
	// Lookup returns the user, or found=false when the store does not know
	// the ident. It matches as the store's database does (collations and
	// all) and sets User.Ident to the identifier as stored; logins go
	// through Find, which insists on the exact spelling. An error means the
	// store could not answer (down, timed out, corrupt row); it is never
	// cached by the caller.
	Lookup(ctx context.Context, ident string) (u User, found bool, err error)
	// String names the store for logs; it never includes a password.
	String() string
	Close() error
}

// BatchLooker is a store that can look many idents up in one query, for
// revalidating thousands of live sessions without a round trip each.
type BatchLooker interface {
	// LookupBatch returns, keyed by ident, the users among idents that
	// the store holds spelled exactly so (as Find answers found); an
	// ident not in the map is unknown. An error means the store could not
	// answer for the batch, a corrupt row among them included: the caller
	// may then ask one ident at a time.
	// A store that wraps others answers errors.ErrUnsupported when one of
	// them cannot batch; asking for no idents tells the caller cheaply.
	LookupBatch(ctx context.Context, idents []string) (map[string]User, error)
}

// LookupEach is LookupBatch for a store that answers from memory: one Find
// per ident.
func LookupEach(ctx context.Context, s Store, idents []string) (map[string]User, error) {
	out := make(map[string]User, len(idents))
	for _, ident := range idents {
		u, found, err := Find(ctx, s, ident)
		if err != nil {
			return nil, err
		}
		if found {
			out[ident] = u
		}
	}
	return out, nil
}

// Editor is a store whose users can be managed from the command line.
type Editor interface {
	Store
	// PutUser creates or replaces the user with u.Ident.
	PutUser(ctx context.Context, u User) error
	// DeleteUser removes ident, reporting whether it existed.
	DeleteUser(ctx context.Context, ident string) (bool, error)
	Lister
}

// Options are what a store may need besides its spec.
type Options struct {
	Logger *slog.Logger
	// Settings are values of types that store packages define for their own
	// settings (mongostore.Settings, say); a store finds its own with
	// SettingOf and the others ignore it.
	Settings []any
}

// SettingOf returns the first of opts.Settings of type T.
func SettingOf[T any](opts Options) (T, bool) {
	for _, s := range opts.Settings {
		if v, ok := s.(T); ok {
			return v, true
		}
	}
	var zero T
	return zero, false
}

// OpenFunc opens a store for a spec. It should not fail merely because a
// database is unreachable at start-up (the database may start after the
// broker); Ping is how a caller checks reachability.
type OpenFunc func(ctx context.Context, spec string, opts Options) (Store, error)

// Pinger is implemented by stores that can check they are reachable.
type Pinger interface {
	Ping(ctx context.Context) error
}

// Checker is implemented by stores that can check, creating nothing, that
// their table (or collection) and its columns exist.
type Checker interface {
	Check(ctx context.Context) error
}

// NotCreatedError says that a store's file, table or collection does not
// exist yet, which `hpfeeds-broker user init` (or the documented DDL)
// creates; the command says how.
type NotCreatedError struct {
	Err  error
	Spec string // the spec that reaches the store, for the command to show
}

func (e *NotCreatedError) Error() string { return e.Err.Error() }
func (e *NotCreatedError) Unwrap() error { return e.Err }

// Initializer is implemented by stores that can create their table (or
// collection) as documented, for `hpfeeds-broker user init`. created is
// false when it was already there.
type Initializer interface {
	Init(ctx context.Context) (created bool, err error)
}

// Lister is implemented by stores that can list their users.
type Lister interface {
	// ListUsers returns every user, sorted by ident.
	ListUsers(ctx context.Context) ([]User, error)
}

var (
	mu      sync.RWMutex
	openers = map[string]OpenFunc{}
)

// The kinds of spec that are not URLs. Kind says which one a spec is.
const (
	KindEnv    = "env"    // the literal name env
	KindJSON   = "json"   // a path ending .json
	KindSQLite = "sqlite" // the literal name sqlite, or a path ending .db or .sqlite
)

// Register makes open available to Open for the specs of one kind: a URL
// scheme ("mongodb", "database+mysql") or one of the Kind constants. Like
// database/sql's Register, it panics if kind is registered twice or open is
// nil: two packages claiming one kind is a programming error.
func Register(kind string, open OpenFunc) {
	mu.Lock()
	defer mu.Unlock()
	if open == nil {
		panic("auth: Register of a nil OpenFunc for " + kind)
	}
	if _, dup := openers[kind]; dup {
		panic("auth: Register called twice for " + kind)
	}
	openers[kind] = open
}

// Kind classifies a spec: the URL scheme of a URL (scheme://…), else
// KindJSON or KindSQLite by the path's suffix, else the spec itself (env,
// sqlite). Only the spec's shape counts, so a Mongo URI whose query ends
// in .json is still a mongodb URL.
func Kind(spec string) string {
	kind, _ := classify(spec)
	return kind
}

func classify(spec string) (kind string, isURL bool) {
	if scheme, _, ok := strings.Cut(spec, "://"); ok && isScheme(scheme) {
		return scheme, true
	}
	switch {
	case strings.HasSuffix(spec, ".json"):
		return KindJSON, false
	case strings.HasSuffix(spec, ".db"), strings.HasSuffix(spec, ".sqlite"):
		return KindSQLite, false
	}
	return spec, false
}

// isScheme reports whether s is a URL scheme (RFC 3986: a letter, then
// letters, digits, "+", "-" and ".").
func isScheme(s string) bool {
	for i, r := range s {
		letter := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z'
		if !letter && (i == 0 || !(r >= '0' && r <= '9' || r == '+' || r == '-' || r == '.')) {
			return false
		}
	}
	return s != ""
}

// opener finds the OpenFunc for kind. A scheme with a driver suffix that is
// not registered itself ("database+postgresql+asyncpg", as SQLAlchemy
// spells a driver) falls back to the scheme before its last "+". URL
// schemes never reach the literal kinds: "sqlite://x" is not a store.
func opener(kind string, isURL bool) (OpenFunc, bool) {
	mu.RLock()
	defer mu.RUnlock()
	for {
		if open, ok := openers[kind]; ok && !(isURL && isLiteral(kind)) {
			return open, true
		}
		i := strings.LastIndex(kind, "+")
		if !isURL || i < 0 {
			return nil, false
		}
		kind = kind[:i]
	}
}

func isLiteral(kind string) bool {
	return kind == KindEnv || kind == KindJSON || kind == KindSQLite
}

// Kinds describes the registered kinds of spec, for help and errors:
// literal names as they are, suffix kinds by their suffix, URL schemes as
// "scheme://…".
func Kinds() []string {
	mu.RLock()
	defer mu.RUnlock()
	var out []string
	for kind := range openers {
		switch {
		case kind == KindJSON:
			out = append(out, "a .json path")
		case kind == KindSQLite:
			out = append(out, "sqlite or a .db/.sqlite path")
		case isLiteral(kind):
			out = append(out, kind)
		default:
			out = append(out, kind+"://…")
		}
	}
	slices.Sort(out)
	return out
}

// Open opens the store for one spec. Its errors do not repeat the spec: the
// caller names it as its users know it (a flag, a config key).
func Open(ctx context.Context, spec string, opts Options) (Store, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if spec == KindJSON {
		return nil, errors.New("json is not a file: give the JSON user file's path, ending .json (e.g. /etc/hpfeeds/users.json)")
	}
	open, ok := opener(classify(spec))
	if !ok {
		return nil, fmt.Errorf("not a credential store this broker knows (use %s)", strings.Join(Kinds(), ", "))
	}
	return open(ctx, spec, opts)
}

// Redact hides the password of a URL-shaped spec, for logs and errors.
func Redact(spec string) string {
	pw, start, ok := password(spec)
	if !ok {
		return spec
	}
	return spec[:start] + "xxxxx" + spec[start+len(pw):]
}

// password finds the password of a URL-shaped spec and where it starts,
// without parsing the URL (a mongodb+srv:// host would need DNS, a
// database URL may not be valid for net/url).
func password(spec string) (pw string, start int, ok bool) {
	i := strings.Index(spec, "://")
	if i < 0 {
		return "", 0, false
	}
	start = i + len("://")
	rest := spec[start:]
	if end := strings.IndexAny(rest, "/?"); end >= 0 {
		rest = rest[:end]
	}
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return "", 0, false
	}
	colon := strings.Index(rest[:at], ":")
	if colon < 0 {
		return "", 0, false
	}
	return rest[colon+1 : at], start + colon + 1, true
}

// RedactError keeps the password of spec out of err's text, as written and
// URL-unescaped (drivers quote either), while errors.Is and errors.As still
// see the cause.
func RedactError(err error, spec string) error {
	pw, _, ok := password(spec)
	if err == nil || !ok || pw == "" {
		return err
	}
	msg := strings.ReplaceAll(err.Error(), pw, "xxxxx")
	if u, uerr := url.PathUnescape(pw); uerr == nil && u != pw {
		msg = strings.ReplaceAll(msg, u, "xxxxx")
	}
	if msg == err.Error() {
		return err
	}
	return redacted{msg, err}
}

type redacted struct {
	msg string
	err error
}

func (r redacted) Error() string { return r.msg }
func (r redacted) Unwrap() error { return r.err }

// Chain asks stores in order; the first that knows the ident, spelled
// exactly so (see Find), answers.
type Chain []Store

// Lookup implements Store. A store that fails does not stop the chain: a
// later store that knows the ident still answers. If none knows it and one
// failed, the failure is returned so the login is reported as a store error.
func (c Chain) Lookup(ctx context.Context, ident string) (User, bool, error) {
	var errs []error
	for _, s := range c {
		u, found, err := Find(ctx, s, ident)
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

// LookupBatch implements BatchLooker when every store of the chain does,
// and answers errors.ErrUnsupported otherwise. Each store is asked for the
// idents the stores before it did not know; if one fails and some ident
// stays unknown, the failure is returned, as Lookup would for that ident.
func (c Chain) LookupBatch(ctx context.Context, idents []string) (map[string]User, error) {
	for _, s := range c {
		if _, ok := s.(BatchLooker); !ok {
			return nil, fmt.Errorf("%s: %w", s, errors.ErrUnsupported)
		}
	}
	out := make(map[string]User, len(idents))
	var errs []error
	for _, s := range c {
		if len(idents) == 0 {
			break
		}
		got, err := s.(BatchLooker).LookupBatch(ctx, idents)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", s, err))
			continue
		}
		for ident, u := range got {
			out[ident] = u
		}
		idents = slices.DeleteFunc(slices.Clone(idents), func(id string) bool { _, ok := got[id]; return ok })
	}
	if len(idents) > 0 && len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
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
	return c.each(func(s Store) error {
		if p, ok := s.(Pinger); ok {
			return p.Ping(ctx)
		}
		return nil
	})
}

// Check checks every store that can check its table or collection.
func (c Chain) Check(ctx context.Context) error {
	return c.each(func(s Store) error {
		if ch, ok := s.(Checker); ok {
			return ch.Check(ctx)
		}
		return nil
	})
}

// each calls f for every store and joins the errors, each named by its store.
func (c Chain) each(f func(Store) error) error {
	var errs []error
	for _, s := range c {
		if err := f(s); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", s, err))
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
