package broker

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/hpfeeds-go/hpfeeds/internal/source"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

// Login throttling bounds how many guesses a source gets checked, however
// many connections it opens. A source is an IPv4 address or an IPv6 /64.
// Until it has failed ThrottleConfig.After logins, each within Window of
// the one before, its logins are checked at once (at most After of them at
// a time). From then on its logins wait in a queue and are checked one at a
// time, the next one throttleFirstDelay after the previous, doubling with
// each further failure up to MaxDelay: whatever a guesser pipelines behind
// AUTH, it learns at most one verdict per interval. Good logins wait their
// turn too (a good login cannot be told from a guess before its check), but
// the queue is served round-robin by ident, so a sensor behind the
// guesser's NAT with another ident waits at most one interval per ident
// queued ahead of it. At most throttleWaiting logins of a source wait; past
// that the newest login of the ident with the most waiting is refused
// unchecked, at once, so a guesser's connections cost the broker no file
// descriptor for long.

// Defaults of ThrottleConfig.
const (
	DefaultThrottleAfter    = 5
	DefaultThrottleWindow   = time.Minute
	DefaultThrottleMaxDelay = 5 * time.Second
)

const (
	throttleFirstDelay = 100 * time.Millisecond
	// throttleWaiting bounds the logins of one throttled source waiting
	// for their check, and so the connections its guesses hold.
	throttleWaiting = 16
	// throttleMaxSources bounds the sources remembered (about 64 bytes
	// each). Past it, sources quiet for a window are forgotten; if none
	// is, a new source is not throttled until one is.
	throttleMaxSources = 1 << 16
)

// ThrottleConfig tunes login throttling; zero fields take the defaults.
type ThrottleConfig struct {
	Disabled bool
	// After failed logins from one source, each within Window of the
	// previous, its logins are checked one at a time.
	After  int
	Window time.Duration
	// MaxDelay bounds the spacing of those checks.
	MaxDelay time.Duration
}

func (c *ThrottleConfig) setDefaults() {
	if c.After <= 0 {
		c.After = DefaultThrottleAfter
	}
	if c.Window <= 0 {
		c.Window = DefaultThrottleWindow
	}
	if c.MaxDelay <= 0 {
		c.MaxDelay = DefaultThrottleMaxDelay
	}
}

// throttle remembers failed logins per source, and queues the logins of
// the sources it throttles.
type throttle struct {
	cfg ThrottleConfig
	ctx context.Context // ends the queues' servers with the broker

	mu        sync.Mutex
	sources   map[netip.Prefix]*failures
	lastSweep time.Time
	delayed   uint64   // logins that waited in a queue for their check
	unchecked uint64   // logins refused unchecked, their source's queue full
	started   quietLog // the lines saying a source is now throttled
}

type failures struct {
	n        int
	last     time.Time
	checking int // logins admitted and not yet reported
	q        loginQueue
}

// admit returns when a login from ip for class (its ident if the store
// knows it, else "") may be checked, true; or false if it is refused
// unchecked. Each admitted login is reported once with done.
func (t *throttle) admit(ip netip.Addr, class string, now time.Time) bool {
	if t.cfg.Disabled || !ip.IsValid() {
		return true
	}
	t.mu.Lock()
	f := t.source(ip, now)
	if f == nil || f.q.waiting == 0 && f.n+f.checking < t.cfg.After {
		if f != nil {
			f.checking++
		}
		t.mu.Unlock()
		return true
	}
	w, evicted := f.q.push(class)
	if w == nil || evicted != nil {
		t.unchecked++
	}
	if evicted != nil {
		evicted <- false
	}
	if w != nil {
		t.delayed++
		if !f.q.serving {
			f.q.serving = true
			go t.serve(f)
		}
	}
	t.mu.Unlock()
	if w == nil {
		return false
	}
	select {
	case ok := <-w:
		return ok
	case <-t.ctx.Done():
		return false
	}
}

// source returns ip's failures, starting its count again after a quiet
// window; nil if there is no room to remember it. Called with t.mu held.
func (t *throttle) source(ip netip.Addr, now time.Time) *failures {
	src := source.Prefix(ip)
	f := t.sources[src]
	if f == nil {
		if !t.room(now) {
			return nil
		}
		f = &failures{}
		t.sources[src] = f
	}
	if f.q.waiting == 0 && now.Sub(f.last) > t.cfg.Window {
		f.n = 0
	}
	return f
}

// serve checks the logins queued for f, one per interval, until none waits.
func (t *throttle) serve(f *failures) {
	for {
		t.mu.Lock()
		wait := time.Until(f.q.next)
		if wait <= 0 {
			w := f.q.pop()
			if w == nil {
				f.q.serving = false
				t.mu.Unlock()
				return
			}
			f.checking++
			f.q.next = time.Now().Add(t.interval(f))
			w <- true
		}
		t.mu.Unlock()
		if wait > 0 {
			select {
			case <-time.After(wait):
			case <-t.ctx.Done():
				return
			}
		}
	}
}

// interval is how long a throttled source's next check waits after its
// last: throttleFirstDelay, doubling with each failure past After.
func (t *throttle) interval(f *failures) time.Duration {
	over := f.n - t.cfg.After
	if over > 30 {
		return t.cfg.MaxDelay
	}
	return min(throttleFirstDelay<<max(over, 0), t.cfg.MaxDelay)
}

// done reports the check of a login admit let through, and whether its
// failure made the source throttled.
func (t *throttle) done(ip netip.Addr, ok bool, now time.Time) (started bool) {
	if t.cfg.Disabled || !ip.IsValid() {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	f := t.sources[source.Prefix(ip)]
	if f == nil {
		return false
	}
	f.checking = max(f.checking-1, 0)
	if ok {
		return false
	}
	f.n++
	f.last = now
	return f.n == t.cfg.After+1
}

// room makes room for a new source if it can. Called with t.mu held.
func (t *throttle) room(now time.Time) bool {
	if t.sources == nil {
		t.sources = map[netip.Prefix]*failures{}
	}
	if len(t.sources) < throttleMaxSources {
		return true
	}
	if now.Sub(t.lastSweep) < time.Second {
		return false // a sweep costs a walk of every source: one a second at most
	}
	t.lastSweep = now
	for src, f := range t.sources {
		if now.Sub(f.last) > t.cfg.Window && f.q.waiting == 0 && f.checking == 0 {
			delete(t.sources, src)
		}
	}
	return len(t.sources) < throttleMaxSources
}

// CategoryLoginThrottled counts logins refused unchecked because their
// source's queue of logins waiting for a check was full.
const CategoryLoginThrottled = "login-throttled"

// admitLogin waits until the login may be checked (see throttle.go), and
// reports whether it may; if not, it refuses the login with the answer a
// failed one gets, so a guesser cannot tell, and logs that rate-limited.
func (c *conn) admitLogin(ident, class string) bool {
	b := c.b
	if b.throttle.admit(c.ip, class, time.Now()) {
		return true
	}
	const reason = "its source is throttled and has too many logins waiting; refused unchecked"
	if n, ok := b.failedLogins.due(reason, time.Now()); ok {
		c.log().Info("login refused: "+reason+" (further refusals are logged at most every 10 s)",
			"source", source.Prefix(c.ip).String(), "refused", n)
	}
	c.fail("", CategoryLoginThrottled, wire.AuthFailed(ident))
	return false
}

// throttleStarted logs, rate-limited, that c's source is now throttled.
func (c *conn) throttleStarted(now time.Time) {
	b := c.b
	if n, ok := b.throttle.started.due(now); ok {
		c.log().Warn("repeated failed logins: this source's logins now wait their turn to be checked, one at a time (further sources are logged at most every 10 s)",
			"source", source.Prefix(c.ip).String(), "max_interval", b.cfg.LoginThrottle.MaxDelay, "sources", n)
	}
}

// ThrottleStats is what login throttling did.
type ThrottleStats struct {
	Delayed   uint64 // logins that waited in their source's queue for their check
	Unchecked uint64 // logins refused unchecked, their source's queue full
	Sources   int    // sources throttled now: past After failures within the window
}

func (t *throttle) stats(now time.Time) ThrottleStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := ThrottleStats{Delayed: t.delayed, Unchecked: t.unchecked}
	for _, f := range t.sources {
		if f.n > t.cfg.After && now.Sub(f.last) <= t.cfg.Window {
			s.Sources++
		}
	}
	return s
}
