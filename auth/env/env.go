// Package env is the credential store that reads users from environment
// variables, for throwaway and container deployments (--auth=env):
//
//	HPFEEDS_<NAME>_SECRET    the secret; without it the ident is unknown
//	HPFEEDS_<NAME>_IDENT     the ident's spelling; defaults to NAME lower-cased
//	HPFEEDS_<NAME>_OWNER     defaults to the ident
//	HPFEEDS_<NAME>_PUBCHANS  comma-separated channels
//	HPFEEDS_<NAME>_SUBCHANS  comma-separated channels
//
// NAME is the ident with its ASCII letters upper-cased, as the Python
// broker's HPFEEDS_<ident.upper()>_SECRET (only ASCII: Unicode case rules
// map many spellings, "ſ" and "s" among them, to one name). Each credential
// has one spelling, so it logs in as one ident: HPFEEDS_SENSOR1_SECRET is
// the user sensor1, and Sensor1 or SENSOR1 are unknown unless
// HPFEEDS_SENSOR1_IDENT names one of them instead. Variables are read on
// every lookup.
package env

import (
	"context"
	"os"
	"slices"
	"strings"

	"github.com/hpfeeds-go/hpfeeds/auth"
)

func init() {
	auth.Register(auth.KindEnv, func(context.Context, string, auth.Options) (auth.Store, error) {
		return Store{Getenv: os.Getenv, Environ: os.Environ}, nil
	})
}

// Store looks users up with Getenv, and lists them from Environ.
type Store struct {
	Getenv  func(string) string
	Environ func() []string
}

// varName is the NAME of the variables of ident.
func varName(ident string) string { return mapASCII(ident, 'a', 'z', 'A'-'a') }

// spelling is the ident a NAME stands for when HPFEEDS_<NAME>_IDENT is unset.
func spelling(name string) string { return mapASCII(name, 'A', 'Z', 'a'-'A') }

// mapASCII shifts the runes from lo to hi by delta: ASCII case mapping
// only, whatever Unicode says of other letters.
func mapASCII(s string, lo, hi, delta rune) string {
	return strings.Map(func(r rune) rune {
		if lo <= r && r <= hi {
			return r + delta
		}
		return r
	}, s)
}

func (s Store) get(name, field string) string {
	return s.Getenv("HPFEEDS_" + name + "_" + field)
}

// Lookup implements auth.Store. Any spelling of the NAME finds the
// credential; the returned Ident is its one spelling, which auth.Find
// holds the login to.
func (s Store) Lookup(_ context.Context, ident string) (auth.User, bool, error) {
	name := varName(ident)
	secret := s.get(name, "SECRET")
	if secret == "" {
		return auth.User{}, false, nil
	}
	u := auth.User{
		Ident:    s.get(name, "IDENT"),
		Owner:    s.get(name, "OWNER"),
		Secret:   secret,
		PubChans: auth.SplitList(s.get(name, "PUBCHANS")),
		SubChans: auth.SplitList(s.get(name, "SUBCHANS")),
	}
	if u.Ident == "" {
		u.Ident = spelling(name)
	}
	return u.WithDefaults(), true, nil
}

// LookupBatch implements auth.BatchLooker from the environment.
func (s Store) LookupBatch(ctx context.Context, idents []string) (map[string]auth.User, error) {
	return auth.LookupEach(ctx, s, idents)
}

// ListUsers implements auth.Lister: every HPFEEDS_<NAME>_SECRET names a
// user. Listing writes nothing, so the read-only store can list.
func (s Store) ListUsers(ctx context.Context) ([]auth.User, error) {
	var users []auth.User
	for _, kv := range s.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		name, prefixed := strings.CutPrefix(k, "HPFEEDS_")
		name, suffixed := strings.CutSuffix(name, "_SECRET")
		if !prefixed || !suffixed || name == "" {
			continue
		}
		if u, found, _ := s.Lookup(ctx, name); found {
			users = append(users, u)
		}
	}
	slices.SortFunc(users, func(a, b auth.User) int { return strings.Compare(a.Ident, b.Ident) })
	return users, nil
}

func (Store) String() string { return "env" }

// Close implements auth.Store.
func (Store) Close() error { return nil }
