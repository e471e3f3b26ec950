// Command hpfeeds-broker runs an hpfeeds broker; it takes the Python
// hpfeeds-broker's command line.
package main

import (
	"fmt"
	"os"
	"regexp"
)

func main() {
	cmd := newRootCmd()
	if err := cmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "hpfeeds-broker:", oneLine(err))
		os.Exit(1)
	}
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
