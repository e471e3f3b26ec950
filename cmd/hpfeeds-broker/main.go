// Command hpfeeds-broker runs an hpfeeds broker; it takes the Python
// hpfeeds-broker's command line.
package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"strings"

	"github.com/hpfeeds-go/hpfeeds/auth"
)

func main() {
	cmd := newRootCmd()
	if err := cmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "hpfeeds-broker:", oneLine(withInitHint(err)))
		os.Exit(1)
	}
}

// withInitHint says how to create a credential store that is not there
// yet; the stores say only what is missing.
func withInitHint(err error) error {
	var nc *auth.NotCreatedError
	var pe *fs.PathError
	if errors.As(err, &pe) && errors.Is(pe, fs.ErrNotExist) && auth.Kind(pe.Path) == auth.KindJSON {
		// The JSON store says only that its file is missing.
		nc = &auth.NotCreatedError{Err: err, Spec: pe.Path}
	} else if !errors.As(err, &nc) {
		return err
	}
	initCmd := "`hpfeeds-broker user init --auth=" + nc.Spec + "`"
	hint := "create it with " + initCmd
	switch kind := auth.Kind(nc.Spec); {
	case kind == auth.KindSQLite:
		hint += ", or add a first user with `hpfeeds-broker user add --auth=" + nc.Spec + " --ident=…`"
	case strings.HasPrefix(kind, "database+"):
		hint = "create it as docs/stores.md shows, or with " + initCmd
	case strings.HasPrefix(kind, "mongodb"):
		hint = "pick another with --mongo-collection, or " + hint
	}
	return fmt.Errorf("%w (%s)", err, hint)
}

var (
	breakAfterColon = regexp.MustCompile(`:\s*\n\s*`)
	lineBreak       = regexp.MustCompile(`\s*\n\s*`)
)

// oneLine folds an error onto one line: drivers' errors span several
// (pgx lists each address it tried, errors.Join puts each store on its own),
// and a start-up failure is one line in a journal.
func oneLine(err error) string {
	return lineBreak.ReplaceAllString(breakAfterColon.ReplaceAllString(err.Error(), ": "), "; ")
}
