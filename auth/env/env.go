// Package env is the credential store that reads users from environment
// variables, for throwaway and container deployments (--auth=env):
//
//	HPFEEDS_<IDENT>_SECRET    the secret; without it the ident is unknown
//	HPFEEDS_<IDENT>_OWNER     defaults to the ident
//	HPFEEDS_<IDENT>_PUBCHANS  comma-separated channels
//	HPFEEDS_<IDENT>_SUBCHANS  comma-separated channels
//
// IDENT is the ident upper-cased. Variables are read on every lookup.
package env

import (
	"context"
	"os"
	"strings"

	"github.com/hpfeeds-go/hpfeeds/auth"
)

func init() {
	auth.Register(auth.KindEnv, func(context.Context, string, auth.Options) (auth.Store, error) {
		return Store{Getenv: os.Getenv}, nil
	})
}

// Store looks users up with Getenv.
type Store struct {
	Getenv func(string) string
}

func (s Store) get(ident, field string) string {
	return s.Getenv("HPFEEDS_" + strings.ToUpper(ident) + "_" + field)
}

// Lookup implements auth.Store.
func (s Store) Lookup(_ context.Context, ident string) (auth.User, bool, error) {
	secret := s.get(ident, "SECRET")
	if secret == "" {
		return auth.User{}, false, nil
	}
	return auth.User{
		Ident:    ident,
		Owner:    s.get(ident, "OWNER"),
		Secret:   secret,
		PubChans: auth.SplitList(s.get(ident, "PUBCHANS")),
		SubChans: auth.SplitList(s.get(ident, "SUBCHANS")),
	}.WithDefaults(), true, nil
}

func (Store) String() string { return "env" }

// Close implements auth.Store.
func (Store) Close() error { return nil }
