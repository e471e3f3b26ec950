package broker

import (
	"sync/atomic"
	"testing"
	"time"
)

// The policy runs once a burst is over, and never after stop: an accept
// racing Shutdown used to re-arm it.
func TestSettlerRunsOnceAfterBurstAndNeverAfterStop(t *testing.T) {
	var runs atomic.Int32
	s := settler{after: 20 * time.Millisecond, run: func() { runs.Add(1) }}
	for range 5 {
		s.accepted()
	}
	deadline := time.Now().Add(10 * time.Second)
	for runs.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := runs.Load(); n != 1 {
		t.Fatalf("%d runs after one burst, want 1", n)
	}
	s.accepted()
	s.stop()
	s.accepted()
	time.Sleep(10 * s.after)
	if n := runs.Load(); n != 1 {
		t.Errorf("%d runs: the policy ran again after stop", n)
	}
}

// Without a policy (a library user, a test broker) nothing is armed.
func TestSettlerWithoutPolicy(t *testing.T) {
	var s settler
	s.accepted()
	if s.timer != nil {
		t.Error("a timer was armed with no policy to run")
	}
	s.stop()
}
