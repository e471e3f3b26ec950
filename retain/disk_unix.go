//go:build unix

package retain

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// lockDir takes an exclusive lock on dir's marker file, held until the
// returned file is closed (or the process dies): nats-server takes none,
// and two JetStream servers on one store, a broker and a `retained
// export` say, would both write its files.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, marker), os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("retained store directory %s: %w", dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("retained store directory %s is in use by another process (a running broker? stop it first)", dir)
		}
		return nil, fmt.Errorf("locking the retained store directory %s: %w", dir, err)
	}
	return f, nil
}

// freeBytes is what dir's filesystem has free for this process; ok is
// false if it cannot tell.
func freeBytes(dir string) (free uint64, ok bool) {
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) != nil {
		return 0, false
	}
	return st.Bavail * uint64(st.Bsize), true
}
