package broker

import (
	"net/netip"
	"sync"
	"time"
)

// Login throttling slows password guessing without ever slowing a login
// that succeeds: once a source has failed ThrottleConfig.After logins, each
// within Window of the one before, the answer to each further failed login
// from it waits, from throttleFirstDelay doubling up to MaxDelay. Only the
// failure answer waits, after the secret was checked, so a sensor with the
// right secret behind the same NAT logs in at once. While it waits the
// connection stays open and counts against MaxConnectionsPerIP, which
// bounds how many guesses a source has in flight.

// Defaults of ThrottleConfig.
const (
	DefaultThrottleAfter    = 5
	DefaultThrottleWindow   = time.Minute
	DefaultThrottleMaxDelay = 5 * time.Second
)

const (
	throttleFirstDelay = 100 * time.Millisecond
	// throttleMaxSources bounds the sources remembered (about 64 bytes
	// each). Past it, sources quiet for a window are forgotten; if none
	// is, a new source is not throttled until one is.
	throttleMaxSources = 1 << 16
)

// ThrottleConfig tunes login throttling; zero fields take the defaults.
type ThrottleConfig struct {
	Disabled bool
	// After failed logins from one source, each within Window of the
	// previous, its further failures are answered late.
	After  int
	Window time.Duration
	// MaxDelay bounds how late a failure is answered.
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

// throttle remembers failed logins per source.
type throttle struct {
	cfg ThrottleConfig

	mu        sync.Mutex
	sources   map[netip.Prefix]*failures
	lastSweep time.Time
	delayed   uint64   // failed logins answered late
	started   quietLog // the lines saying a source is now throttled
}

type failures struct {
	n    int
	last time.Time
}

// throttleSource is what one throttled source is: an IPv4 address, or the
// IPv6 /64 that one host or site is usually given.
func throttleSource(ip netip.Addr) netip.Prefix {
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, _ := ip.Prefix(bits)
	return p
}

// failed records a failed login from ip and returns how long its answer
// waits, and whether this failure made the source throttled.
func (t *throttle) failed(ip netip.Addr, now time.Time) (delay time.Duration, started bool) {
	if t.cfg.Disabled || !ip.IsValid() {
		return 0, false
	}
	src := throttleSource(ip)
	t.mu.Lock()
	defer t.mu.Unlock()
	f := t.sources[src]
	if f == nil {
		if !t.room(now) {
			return 0, false
		}
		f = &failures{}
		t.sources[src] = f
	}
	if now.Sub(f.last) > t.cfg.Window {
		f.n = 0
	}
	f.n++
	f.last = now
	over := f.n - t.cfg.After
	if over <= 0 {
		return 0, false
	}
	t.delayed++
	delay = t.cfg.MaxDelay
	if over <= 30 {
		delay = min(throttleFirstDelay<<(over-1), delay)
	}
	return delay, over == 1
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
		if now.Sub(f.last) > t.cfg.Window {
			delete(t.sources, src)
		}
	}
	return len(t.sources) < throttleMaxSources
}

// ThrottleStats is what login throttling did.
type ThrottleStats struct {
	Delayed uint64 // failed logins answered late
	Sources int    // sources throttled now: past After failures within the window
}

func (t *throttle) stats(now time.Time) ThrottleStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := ThrottleStats{Delayed: t.delayed}
	for _, f := range t.sources {
		if f.n > t.cfg.After && now.Sub(f.last) <= t.cfg.Window {
			s.Sources++
		}
	}
	return s
}
