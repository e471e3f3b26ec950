package sqlstore

import (
	"strings"
	"testing"
)

// FuzzDSN: translating any --auth URL never panics, and no error shows the
// URL's password (errors are logged and printed at start-up). The URL is
// prefix + user + ":" + a marker password + "@" + rest, so a leak is the
// marker showing up where the rest of the input does not have it.
func FuzzDSN(f *testing.F) {
	for _, s := range [][3]string{
		{"database+postgresql://", "hp", "db.example:5433/hpfeeds?sslmode=disable"},
		{"database+postgresql+asyncpg://", "hp", "db/hpfeeds"},
		{"database+postgresql://", "hp", "db:port/x"},
		{"database+postgresql://", "hp", "[::1/x"},
		{"database+postgresql://", "hp", "db/%zz"},
		{"database+postgres://", "", "h/x"},
		{"database+mysql://", "root", "127.0.0.1:3307/hpfeeds"},
		{"database+mysql://", "u", "aurora.example/hp?charset=utf8mb4"},
		{"database+mysql://", "u", "h/hp?unix_socket=/run/mysqld/mysqld.sock&ssl=true"},
		{"database+mysql://", "u", "h:99999/hp"},
		{"database+mysql://", "u", "h/hp?%zz"},
		{"database+mysql://", "u%", "h/hp"},
		{"database+sqlite://", "u", "/"},
		{"database+sqlite:///", "", "x.db"},
		{"database+oracle://", "hp", "db/x"},
		{"database+", "", ""},
		{"database+mysql", "", ""},
	} {
		f.Add(s[0], s[1], s[2])
	}
	const marker = "Pw0rdMarker"
	f.Fuzz(func(t *testing.T, prefix, user, rest string) {
		if _, after, ok := strings.Cut(prefix, "://"); ok && after != "" || strings.ContainsAny(user, "/?#@") {
			return // the marker would not be in the userinfo: not a password
		}
		spec := prefix + user + ":" + marker + "@" + rest
		_, _, err := DSN(spec)
		if err == nil || strings.Contains(prefix+user+rest, marker) {
			return
		}
		if strings.Contains(err.Error(), marker) {
			t.Fatalf("%s: error shows the password: %v", spec, err)
		}
	})
}
