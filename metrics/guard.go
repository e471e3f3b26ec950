package metrics

import (
	"cmp"
	"context"
	"crypto/sha256"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/hpfeeds-go/hpfeeds/internal/source"
	"github.com/hpfeeds-go/hpfeeds/internal/tarpit"
)

// slots admits the exporter's connections. Past its cap it never queues a
// new connection: it closes one that holds a slot without using it (see
// rank), taken from the source holding the most connections (the longest
// in its state). A new connection finds room unless every slot is in
// the middle of a request; then it is closed at once. So any number of
// clients holding connections, or asking and idling, cannot keep a scrape
// or /healthz out, as they could when connections waited to be accepted.
type slots struct {
	net.Listener
	max int

	mu      sync.Mutex
	conns   map[net.Conn]*slot
	sources map[netip.Addr]int // connections per source address
}

type slot struct {
	src   netip.Addr
	state http.ConnState // StateNew, StateActive or StateIdle
	since time.Time      // of the state
	held  atomic.Bool    // its request is held before a refusal (tarpit)
}

func newSlots(l net.Listener, max int) *slots {
	return &slots{Listener: l, max: max, conns: map[net.Conn]*slot{}, sources: map[netip.Addr]int{}}
}

func (s *slots) Accept() (net.Conn, error) {
	for {
		nc, err := s.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if victim, ok := s.admit(nc); ok {
			if victim != nil {
				victim.Close()
			}
			return nc, nil
		}
		nc.Close()
	}
}

// admit takes a slot for nc, naming the connection to close for it, or
// reports that every slot is busy.
func (s *slots) admit(nc net.Conn) (victim net.Conn, ok bool) {
	src := source.OfAddr(nc.RemoteAddr())
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.conns) >= s.max {
		if victim = s.victim(); victim == nil {
			return nil, false
		}
		s.forget(victim)
	}
	s.conns[nc] = &slot{src: src, state: http.StateNew, since: time.Now()}
	s.sources[src]++
	return victim, true
}

// victim is the connection to close for a new one, or nil. Called with
// s.mu held.
func (s *slots) victim() net.Conn {
	var (
		best net.Conn
		bs   *slot
	)
	for nc, x := range s.conns {
		if rank(x) == 0 {
			continue
		}
		if bs == nil || cmp.Or(cmp.Compare(rank(x), rank(bs)),
			cmp.Compare(s.sources[x.src], s.sources[bs.src]), bs.since.Compare(x.since)) > 0 {
			best, bs = nc, x
		}
	}
	return best
}

// rank orders the connections to close: those held before a refusal
// first, then idle ones, then those that have not asked yet; never one in
// the middle of a request (0).
func rank(x *slot) int {
	if x.held.Load() {
		return 3
	}
	switch x.state {
	case http.StateIdle:
		return 2
	case http.StateNew:
		return 1
	}
	return 0
}

// gated puts an authGate before the handler web.Serve installs (its basic
// authentication), at the first Accept: web.Serve sets that handler just
// before it serves, in the goroutine that calls Accept, and no
// connection's goroutine reads it before Accept returns.
type gated struct {
	net.Listener
	srv  *http.Server
	once sync.Once
}

func (g *gated) Accept() (net.Conn, error) {
	g.once.Do(func() { g.srv.Handler = newAuthGate(g.srv.Handler) })
	return g.Listener.Accept()
}

// forget frees nc's slot. Called with s.mu held.
func (s *slots) forget(nc net.Conn) {
	x := s.conns[nc]
	if x == nil {
		return
	}
	delete(s.conns, nc)
	if s.sources[x.src]--; s.sources[x.src] <= 0 {
		delete(s.sources, x.src)
	}
}

// mark is the server's ConnContext hook: it gives the request the mark
// tarpit.Hold sets on its slot.
func (s *slots) mark(ctx context.Context, c net.Conn) context.Context {
	if tc, ok := c.(interface{ NetConn() net.Conn }); ok {
		c = tc.NetConn()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if x := s.conns[c]; x != nil {
		return tarpit.WithMark(ctx, &x.held)
	}
	return ctx
}

// track is the server's ConnState hook: it keeps what each slot does.
func (s *slots) track(c net.Conn, state http.ConnState) {
	if tc, ok := c.(interface{ NetConn() net.Conn }); ok {
		c = tc.NetConn() // a TLS connection over the one Accept returned
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch state {
	case http.StateClosed, http.StateHijacked:
		s.forget(c)
	default:
		if x := s.conns[c]; x != nil {
			x.state, x.since = state, time.Now()
		}
	}
}

// Bounds of the basic-auth gate: each check of a password not seen to
// succeed costs a bcrypt comparison (about 100 ms at the usual cost 10,
// one at a time in exporter-toolkit), so a source gets one check at a
// time, a few and then one a second, and all sources together a few at a
// time and a few a second. A credential that once succeeded is let
// through to the check without waiting, which exporter-toolkit then
// answers from its own cache.
const (
	authPerSource      = rate.Limit(1)
	authPerSourceBurst = 3
	authAll            = rate.Limit(4)
	authAllBurst       = 8
	authAllAtOnce      = 4
	authKnownMax       = 256  // credentials remembered
	authSourcesMax     = 4096 // sources remembered
)

// authGate stands before the web configuration's basic authentication and
// answers 429 to a password check past the bounds above, so a flood of
// wrong passwords costs little CPU and never queues in front of a scrape.
// It only ever refuses: every request it lets through is still checked.
type authGate struct {
	next   http.Handler
	all    *rate.Limiter
	atOnce chan struct{} // checks in progress, all sources

	sources source.Map[authSource]

	mu    sync.Mutex
	known map[[sha256.Size]byte]time.Time // hashes of credentials that passed, and when
}

type authSource struct {
	*rate.Limiter
	checking atomic.Bool // a check in progress
}

func newAuthGate(next http.Handler) *authGate {
	return &authGate{next: next, all: rate.NewLimiter(authAll, authAllBurst), atOnce: make(chan struct{}, authAllAtOnce),
		known: map[[sha256.Size]byte]time.Time{},
		sources: source.Map[authSource]{Max: authSourcesMax, New: func() *authSource {
			return &authSource{Limiter: rate.NewLimiter(authPerSource, authPerSourceBurst)}
		}}}
}

func (g *authGate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	cred := r.Header.Get("Authorization")
	if cred == "" { // answered 401 without a bcrypt comparison
		g.next.ServeHTTP(w, r)
		return
	}
	key := sha256.Sum256([]byte(cred))
	if g.isKnown(key) { // until it fails: the user may have been changed
		g.next.ServeHTTP(&authOutcome{ResponseWriter: w, decided: func(passed bool) {
			if !passed {
				g.forget(key)
			}
		}}, r)
		return
	}
	done, ok := g.begin(r.RemoteAddr)
	if !ok {
		tarpit.Hold(r, time.Second)
		w.Header().Set("Retry-After", "1")
		http.Error(w, "too many password checks; retry in a second", http.StatusTooManyRequests)
		return
	}
	defer done() // if the handler never answered
	g.next.ServeHTTP(&authOutcome{ResponseWriter: w, decided: func(passed bool) {
		done() // the check is over once the handler answers
		if passed {
			g.remember(key)
		}
	}}, r)
}

func (g *authGate) isKnown(key [sha256.Size]byte) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	_, ok := g.known[key]
	return ok
}

func (g *authGate) forget(key [sha256.Size]byte) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.known, key)
}

// remember keeps a credential that passed, forgetting the oldest past
// authKnownMax.
func (g *authGate) remember(key [sha256.Size]byte) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.known) >= authKnownMax {
		var oldest [sha256.Size]byte
		var at time.Time
		for k, t := range g.known {
			if at.IsZero() || t.Before(at) {
				oldest, at = k, t
			}
		}
		delete(g.known, oldest)
	}
	g.known[key] = time.Now()
}

// begin starts a check for the source of remote within the bounds, and
// returns the function that ends it (once; later calls do nothing).
func (g *authGate) begin(remote string) (done func(), ok bool) {
	s := g.sources.Get(source.Of(remote))
	if !s.checking.CompareAndSwap(false, true) {
		return nil, false
	}
	if !s.Allow() || !g.all.Allow() {
		s.checking.Store(false)
		return nil, false
	}
	select {
	case g.atOnce <- struct{}{}:
	default:
		s.checking.Store(false)
		return nil, false
	}
	return sync.OnceFunc(func() {
		<-g.atOnce
		s.checking.Store(false)
	}), true
}

// authOutcome calls decided when the wrapped handler answers: the
// credential passed unless the answer is 401 or 429.
type authOutcome struct {
	http.ResponseWriter
	decided func(passed bool)
	written bool
}

func (o *authOutcome) WriteHeader(code int) {
	if !o.written {
		o.written = true
		o.decided(code != http.StatusUnauthorized && code != http.StatusTooManyRequests)
	}
	o.ResponseWriter.WriteHeader(code)
}

func (o *authOutcome) Write(b []byte) (int, error) {
	if !o.written {
		o.WriteHeader(http.StatusOK)
	}
	return o.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (o *authOutcome) Unwrap() http.ResponseWriter { return o.ResponseWriter }
