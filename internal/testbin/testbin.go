// Package testbin builds the command under test, so its tests run the real
// binary as users do.
package testbin

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Main builds the package in the working directory as name into a
// temporary directory, sets *binary to its path, runs the tests and exits
// with their status. Call it from TestMain.
func Main(m *testing.M, name string, binary *string) {
	dir, err := os.MkdirTemp("", name+"-test")
	if err != nil {
		panic(err)
	}
	*binary = filepath.Join(dir, name)
	if out, err := exec.Command("go", "build", "-o", *binary, ".").CombinedOutput(); err != nil {
		os.Stderr.Write(out)
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
