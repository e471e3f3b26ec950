// Package watch calls back when files change on disk, including the ways
// deployments really replace them: an atomic rename over the file, and a
// Kubernetes secret's or certbot's symlink swap.
package watch

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Debounce is how long events must stop before the callback runs, so an
// editor's write-rename-chmod sequence causes one reload.
const Debounce = 100 * time.Millisecond

// Files watches the directories holding paths and calls onChange after any
// change in them settles. Watching the directory, not the file, is what
// catches renames and symlink swaps; onChange must therefore cope with being
// called when nothing it cares about changed (compare contents). Stop the
// watch with the returned function.
func Files(log *slog.Logger, paths []string, onChange func()) (stop func(), err error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watching %v: %w", paths, err)
	}
	seen := map[string]bool{}
	for _, p := range paths {
		dir := filepath.Dir(p)
		if seen[dir] {
			continue
		}
		seen[dir] = true
		if err := w.Add(dir); err != nil {
			w.Close()
			return nil, fmt.Errorf("watching %s: %w", dir, err)
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		timer := time.NewTimer(time.Hour)
		timer.Stop()
		for {
			select {
			case _, ok := <-w.Events:
				if !ok {
					timer.Stop()
					return
				}
				timer.Reset(Debounce)
			case err, ok := <-w.Errors:
				if !ok {
					timer.Stop()
					return
				}
				log.Warn("file watch error", "paths", paths, "err", err)
			case <-timer.C:
				onChange()
			}
		}
	}()
	return func() { w.Close(); <-done }, nil
}
