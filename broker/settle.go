package broker

import (
	"sync"
	"time"
)

// settleAfter is how long accepts must pause before Config.AfterAcceptBurst
// runs.
const settleAfter = 5 * time.Second

// settler runs a policy once a burst of connections is over: accepts have
// paused for after. It is the command's to choose (returning memory to the
// OS after a reconnect storm, say); a library user or a test broker that
// sets none gets nothing. After stop it never runs again.
type settler struct {
	after time.Duration
	run   func() // nil: no policy

	mu      sync.Mutex
	timer   *time.Timer
	stopped bool
}

// accepted notes a new connection, pushing the policy back.
func (s *settler) accepted() {
	if s.run == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.stopped:
	case s.timer == nil:
		s.timer = time.AfterFunc(s.after, s.run)
	default:
		s.timer.Reset(s.after)
	}
}

// stop cancels the policy for good: an accept racing Shutdown cannot
// re-arm it.
func (s *settler) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped = true
	if s.timer != nil {
		s.timer.Stop()
	}
}
