// Package version says which build of the commands is running: the
// version and commit `make release` sets with -ldflags from git, else what
// the Go toolchain recorded in the binary.
package version

import (
	"runtime"
	"runtime/debug"
)

// Set by `make release`:
//
//	-ldflags "-X github.com/hpfeeds-go/hpfeeds/internal/version.Version=v1.2.0 -X …Commit=abc1234"
var (
	Version string
	Commit  string
)

// String is "VERSION (commit COMMIT, GOVERSION)".
func String() string {
	v, c := Version, Commit
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "" {
			v = bi.Main.Version
		}
		dirty := false
		for _, s := range bi.Settings {
			switch {
			case c == "" && s.Key == "vcs.revision":
				c = s.Value[:min(len(s.Value), 12)]
			case s.Key == "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if dirty && Commit == "" && c != "" {
			c += "-dirty"
		}
	}
	if v == "" {
		v = "(devel)"
	}
	if c == "" {
		c = "unknown"
	}
	return v + " (commit " + c + ", " + runtime.Version() + ")"
}
