package broker

import (
	"runtime"
	"runtime/debug"
	"sync"
	"time"
)

// settleAfter is how long accepts must pause before the broker compacts
// its memory after a burst of connections.
const settleAfter = 5 * time.Second

// settler returns memory to the OS once a burst of connections is over.
// Logging in grows each connection's goroutine stack and leaves garbage;
// an idle broker runs no garbage collection for minutes, so without this a
// reconnect storm (every sensor back after a network blip) would keep its
// peak memory long after the connections went idle. One collection per
// burst costs milliseconds.
type settler struct {
	mu    sync.Mutex
	timer *time.Timer
}

// accepted notes a new connection, pushing the compaction back.
func (s *settler) accepted() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.timer == nil {
		s.timer = time.AfterFunc(settleAfter, compact)
		return
	}
	s.timer.Reset(settleAfter)
}

// compact collects twice, since each collection at most halves a
// goroutine's stack, then returns the freed memory to the OS.
func compact() {
	runtime.GC()
	debug.FreeOSMemory()
}

func (s *settler) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.timer != nil {
		s.timer.Stop()
	}
}
