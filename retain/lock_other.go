//go:build !unix

package retain

import "os"

// lockDir does not lock off Unix: keep one process on a store there.
func lockDir(string) (*os.File, error) { return nil, nil }
