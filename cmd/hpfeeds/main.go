// Command hpfeeds talks to an hpfeeds broker from the shell: a drop-in for
// the Python hpfeeds command (subscribe, publish, sendfile), and bench, the
// project's load generator.
package main

import (
	"fmt"
	"os"
)

func main() {
	cmd := newRootCmd(os.Stdout)
	if err := cmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "[feedcli] Error:", err)
		os.Exit(1)
	}
}
