package auth

import (
	"context"
	"errors"
	"strings"
	"unicode/utf8"
)

// Why an ident cannot name any user, whatever the store.
var (
	ErrIdentEmpty   = errors.New("empty ident")
	ErrIdentNUL     = errors.New("ident holds a NUL byte")
	ErrIdentNotUTF8 = errors.New("ident is not valid UTF-8")
)

// CheckIdent refuses idents no store can hold: empty, with a NUL byte (C
// strings and PostgreSQL text end there) or not UTF-8 (the text columns and
// BSON strings stores keep identifiers in). Such a login is refused before
// any lookup, so a client cannot turn it into a store error.
func CheckIdent(ident string) error {
	switch {
	case ident == "":
		return ErrIdentEmpty
	case strings.IndexByte(ident, 0) >= 0:
		return ErrIdentNUL
	case !utf8.ValidString(ident):
		return ErrIdentNotUTF8
	}
	return nil
}

// Find is how a login asks s for ident: it refuses idents CheckIdent
// refuses without asking, and answers found only when the store's
// identifier is ident byte for byte. Stores match the way their database
// does (a MySQL collation ignores case and trailing spaces, for one) and
// return the identifier as stored; a user found under another spelling is
// unknown, so one credential has exactly one ident in sessions, published
// messages, metric labels and logs.
func Find(ctx context.Context, s Store, ident string) (User, bool, error) {
	if CheckIdent(ident) != nil {
		return User{}, false, nil
	}
	u, found, err := s.Lookup(ctx, ident)
	if err != nil || !found || u.Ident != ident {
		return User{}, false, err
	}
	return u, true, nil
}

// DuplicateFinder is a store whose database may hold one identifier in
// several rows, or several spellings its collation finds equal ("Alice",
// "alice", "alice "): the tables the Python broker documents have no
// UNIQUE key. Only the exactly spelled row can log in (Find), but which
// one an operator's tools show is up to the database.
type DuplicateFinder interface {
	// DuplicateIdents lists one spelling of each identifier that more than
	// one row holds, as the database compares them.
	DuplicateIdents(ctx context.Context) ([]string, error)
}
