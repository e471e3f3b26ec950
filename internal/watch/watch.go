// Package watch calls back when files change on disk, including the ways
// deployments really replace them: an atomic rename over the file, and a
// Kubernetes secret's or certbot's symlink swap.
package watch

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Debounce is how long events must stop before the callback runs, so an
// editor's write-rename-chmod sequence causes one reload.
const Debounce = 100 * time.Millisecond

// Files watches paths and calls onChange after a change to one of them
// settles. A change is an event for a path itself, for a symlink met while
// resolving it, or for the file it finally names; events for other files
// in the same directories (a log file beside a user file, say) are
// ignored. Directories are watched, not files, which is what catches
// renames and symlink swaps; the symlinks are resolved again after every
// change, so a repointed link is followed. onChange may still be called
// when contents did not change (compare them). Stop the watch with the
// returned function.
func Files(log *slog.Logger, paths []string, onChange func()) (stop func(), err error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watching %v: %w", paths, err)
	}
	relevant, err := follow(w, paths)
	if err != nil {
		w.Close()
		return nil, err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		timer := time.NewTimer(time.Hour)
		timer.Stop()
		for {
			select {
			case ev, ok := <-w.Events:
				if !ok {
					timer.Stop()
					return
				}
				if !relevant[filepath.Clean(ev.Name)] {
					continue
				}
				if r, err := follow(w, paths); err == nil {
					relevant = r
				} else {
					log.Warn("file watch: cannot follow a repointed symlink", "paths", paths, "err", err)
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

// follow returns the names whose events matter for paths, and watches the
// directories holding them.
func follow(w *fsnotify.Watcher, paths []string) (map[string]bool, error) {
	relevant := map[string]bool{}
	for _, p := range paths {
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, fmt.Errorf("watching %s: %w", p, err)
		}
		for _, name := range chain(abs) {
			if relevant[name] {
				continue
			}
			relevant[name] = true
			dir := filepath.Dir(name)
			if err := w.Add(dir); err != nil && !os.IsNotExist(err) {
				return nil, fmt.Errorf("watching %s: %w", dir, err)
			}
		}
	}
	return relevant, nil
}

// chain returns p, every symlink met while resolving it component by
// component (a Kubernetes secret's users.json and ..data), and the path it
// finally resolves to.
func chain(p string) []string {
	out := []string{p}
	cur := "/"
	todo := components(p)
	for hops := 0; len(todo) > 0; {
		next := filepath.Join(cur, todo[0])
		todo = todo[1:]
		fi, err := os.Lstat(next)
		if err != nil || fi.Mode()&os.ModeSymlink == 0 || hops == 40 {
			cur = next
			continue
		}
		hops++
		out = append(out, next)
		target, err := os.Readlink(next)
		if err != nil {
			cur = next
			continue
		}
		if filepath.IsAbs(target) {
			cur = "/"
		}
		todo = append(components(target), todo...)
	}
	return append(out, cur)
}

func components(p string) []string {
	var out []string
	for _, c := range strings.Split(p, string(filepath.Separator)) {
		if c != "" && c != "." {
			out = append(out, c)
		}
	}
	return out
}
