// Command hpfeeds-broker runs an hpfeeds broker; it takes the Python
// hpfeeds-broker's command line.
package main

import (
	"fmt"
	"os"
)

func main() {
	cmd := newRootCmd()
	if err := cmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "hpfeeds-broker:", err)
		os.Exit(1)
	}
}
