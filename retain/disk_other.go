//go:build !unix

package retain

import "os"

// lockDir does not lock off Unix: keep one process on a store there.
func lockDir(string) (*os.File, error) { return nil, nil }

// freeBytes cannot tell off Unix.
func freeBytes(string) (uint64, bool) { return 0, false }
