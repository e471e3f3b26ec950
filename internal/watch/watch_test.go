package watch

import (
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// watched starts a watch on path and returns a count of its callbacks.
func watched(t *testing.T, path string) *atomic.Int64 {
	t.Helper()
	var calls atomic.Int64
	stop, err := Files(slog.Default(), []string{path}, func() { calls.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return &calls
}

// waitCalls waits until calls reaches want, failing after 10 s.
func waitCalls(t *testing.T, calls *atomic.Int64, want int64, what string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); calls.Load() < want; {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d callbacks, want %d", what, calls.Load(), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func write(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// A log file written beside the watched file triggers nothing; the
// watched file, rewritten or replaced by a rename, does.
func TestOnlyTheFileItself(t *testing.T) {
	dir := t.TempDir()
	users := filepath.Join(dir, "users.json")
	write(t, users, "{}")
	calls := watched(t, users)
	logFile := filepath.Join(dir, "broker.log")
	for i := range 50 {
		f, _ := os.OpenFile(logFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		f.WriteString("a log line\n")
		f.Close()
		if i%10 == 0 {
			os.Rename(logFile, logFile+".1") // rotated
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Ten debounce periods with no call: the writes above were seen and
	// ignored, not merely not yet settled.
	time.Sleep(10 * Debounce)
	if n := calls.Load(); n != 0 {
		t.Fatalf("%d callbacks for writes to another file", n)
	}
	write(t, users, `{"a": {"secret": "s"}}`)
	waitCalls(t, calls, 1, "file rewritten")
	tmp := filepath.Join(dir, ".users-tmp.json")
	write(t, tmp, "{}")
	if err := os.Rename(tmp, users); err != nil {
		t.Fatal(err)
	}
	waitCalls(t, calls, 2, "file replaced by a rename")
}

// A Kubernetes secret mount: users.json -> ..data/users.json, ..data ->
// a timestamped directory, swapped by renaming a new ..data link over it.
// Rewriting the symlink's target in its own directory triggers too.
func TestSymlinkSwapAndTarget(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"..2024_1", "..2024_2"} {
		os.Mkdir(filepath.Join(dir, d), 0o755)
		write(t, filepath.Join(dir, d, "users.json"), "{} ")
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Symlink("..2024_1", filepath.Join(dir, "..data")))
	must(os.Symlink("..data/users.json", filepath.Join(dir, "users.json")))
	calls := watched(t, filepath.Join(dir, "users.json"))
	must(os.Symlink("..2024_2", filepath.Join(dir, "..data_tmp")))
	must(os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))
	waitCalls(t, calls, 1, "..data swapped")
	// The new target is followed: rewriting it in place is a change.
	write(t, filepath.Join(dir, "..2024_2", "users.json"), `{"a": {"secret": "s"}}`)
	waitCalls(t, calls, 2, "the new target rewritten")
	// The old target is no longer the file.
	before := calls.Load()
	write(t, filepath.Join(dir, "..2024_1", "users.json"), `{"old": {"secret": "s"}}`)
	time.Sleep(10 * Debounce)
	if calls.Load() != before {
		t.Fatal("a write to the old target triggered a reload")
	}
}
