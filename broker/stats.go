package broker

import (
	"sync"
	"sync/atomic"
)

// stats counts per-connection events (not per-message ones, which live in
// connStats). Failed logins are counted under the empty ident.
type stats struct {
	made atomic.Uint64

	mu           sync.Mutex
	ready        map[string]uint64
	lost         map[string]uint64
	errors       map[ErrorKey]uint64
	backpressure map[BackpressureKey]uint64
}

// ErrorKey labels a connection error count.
type ErrorKey struct{ Ident, Category string }

// BackpressureKey labels subscribers closed for backpressure: Reason is
// BackpressureDeadline or BackpressureHardBound.
type BackpressureKey struct{ Ident, Reason string }

// Why a subscriber was closed for backpressure.
const (
	BackpressureDeadline  = "deadline"
	BackpressureHardBound = "hard-bound"
	// The broker was over its memory budget and this subscriber held the
	// most queued bytes.
	BackpressureMemoryBudget = "memory-budget"
	// It held its publishers past the stall mark for Config.StallTimeout
	// without draining to half the mark.
	BackpressureStalled = "stalled"
)

func (s *stats) init() {
	s.ready = map[string]uint64{}
	s.lost = map[string]uint64{}
	s.errors = map[ErrorKey]uint64{}
	s.backpressure = map[BackpressureKey]uint64{}
}

func (s *stats) connectionMade() { s.made.Add(1) }

func (s *stats) connectionReady(ident string) {
	s.mu.Lock()
	s.ready[ident]++
	s.mu.Unlock()
}

func (s *stats) connectionLost(ident string) {
	s.mu.Lock()
	s.lost[ident]++
	s.mu.Unlock()
}

func (s *stats) connectionError(ident, category string) {
	s.mu.Lock()
	s.errors[ErrorKey{ident, category}]++
	s.mu.Unlock()
}

// backpressureClose counts a subscriber closed for being too slow, both as
// the spec's error category and by reason.
func (s *stats) backpressureClose(ident, reason string) {
	s.mu.Lock()
	s.errors[ErrorKey{ident, CategoryDeadlineTimerExpired}]++
	s.backpressure[BackpressureKey{ident, reason}]++
	s.mu.Unlock()
}
