// Package broker is the hpfeeds broker: it accepts connections on endpoints,
// authenticates them against a credential store, and fans every PUBLISH out
// to the subscribers of its channel.
//
// The publish path is built for speed: a publisher's frame is copied once
// and the same bytes are queued to every subscriber. A channel's
// subscribers are a slice under a read-write lock: publishers share the
// read lock while they queue, and each subscriber's queue has a mutex held
// for a few instructions, never during I/O or logging; subscribing and
// unsubscribing take the write lock for O(1) work. Each connection's queue
// is bounded in bytes, and its writer goroutine, started only while there
// is something to send, coalesces the queue into as few syscalls as
// possible.
package broker

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hpfeeds-go/hpfeeds/retain"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

// Broker routes frames between connections. Create one with New.
type Broker struct {
	cfg Config
	// Frame limits before and after authentication.
	preAuth, postAuth wire.Limits

	ctx    context.Context // cancelled by Shutdown; bounds credential lookups
	cancel context.CancelFunc

	topicsMu sync.RWMutex
	topics   map[string]*topic

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	perIP     map[netip.Addr]int // open connections per source, with MaxConnectionsPerIP
	closing   bool
	wg        sync.WaitGroup // one per live connection and accept loop

	stats          stats
	mem            memBudget
	refusals       refusals
	lookupFailures quietLog // the log lines of failed credential lookups
	plaintext      plaintextLogs
	failedLogins   quietLogs  // the log lines of failed logins, per reason
	sessionLogs    sourceLogs // the login and disconnect lines, per source
	throttle       throttle
	settle         settler
	retired        retired                 // guarded by mu
	idents         map[string]*identRecord // every ident that logged in; guarded by mu

	nextID atomic.Uint64 // the last connection id given
	// clock is the time (Unix ns) to a quarter second, kept by the background
	// loop, so a publish can stamp its channel without reading the clock.
	clock atomic.Int64
	rates rateWindow
	ret   retainState // retained subscriptions (retain.go)
}

// New checks cfg and returns a broker ready to Serve.
func New(cfg Config) (*Broker, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &Broker{
		cfg:       cfg,
		ctx:       ctx,
		cancel:    cancel,
		topics:    map[string]*topic{},
		listeners: map[net.Listener]struct{}{},
		conns:     map[*conn]struct{}{},
		perIP:     map[netip.Addr]int{},
		idents:    map[string]*identRecord{},
	}
	b.settle = settler{after: settleAfter, run: cfg.AfterAcceptBurst}
	b.preAuth, b.postAuth = cfg.limits()
	b.throttle.cfg, b.throttle.ctx = cfg.LoginThrottle, ctx
	b.stats.init()
	b.mem.init(cfg.MemoryLimit)
	if cfg.MemoryLimit > 0 {
		b.wg.Add(1)
		go func() { defer b.wg.Done(); b.enforceBudget() }()
	}
	b.clock.Store(time.Now().UnixNano())
	b.rates.add(time.Now(), nil)
	b.wg.Add(1)
	go b.background()
	if cfg.RevalidateEvery > 0 {
		b.wg.Add(1)
		go b.revalidateLoop()
	}
	return b, nil
}

// ErrClosed is returned by Serve once the broker is shut down.
var ErrClosed = errors.New("broker: shut down")

// Serve accepts connections on l until l fails or the broker shuts down.
// mode restricts what the endpoint's clients may do.
func (b *Broker) Serve(l net.Listener, mode Mode) error {
	b.mu.Lock()
	if b.closing {
		b.mu.Unlock()
		l.Close()
		return ErrClosed
	}
	b.listeners[l] = struct{}{}
	b.wg.Add(1)
	b.mu.Unlock()
	defer b.wg.Done()

	endpoint := l.Addr().String()
	if bl, ok := l.(*Listener); ok {
		endpoint = bl.Endpoint.String()
	}
	var delay time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if b.isClosing() {
				return ErrClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				// Out of file descriptors and the like: back off rather
				// than spin, and keep serving the connections we have.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				b.cfg.Logger.Warn("accept failed; retrying", "addr", l.Addr(), "err", err, "retry_in", delay)
				time.Sleep(delay)
				continue
			}
			b.mu.Lock()
			delete(b.listeners, l)
			b.mu.Unlock()
			return err
		}
		delay = 0
		b.settle.accepted()
		c := newConn(b, nc, mode, endpoint)
		switch reason, ok := b.track(c); {
		case !ok && reason == "":
			nc.Close()
			return ErrClosed
		case !ok:
			// Closed before INFO, so the client sees the connection end
			// and retries with its backoff; the accept loop never waits.
			b.refuse(reason, nc.RemoteAddr())
			nc.Close()
			continue
		}
		go c.serve()
	}
}

func (b *Broker) isClosing() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closing
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// track admits a new connection. It fails with an empty reason once the
// broker is shutting down, or with the connection limit that was hit.
func (b *Broker) track(c *conn) (reason string, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.closing:
		return "", false
	case b.cfg.MaxConnections > 0 && len(b.conns) >= b.cfg.MaxConnections:
		return RefusedMaxConnections, false
	case b.cfg.MaxConnectionsPerIP > 0 && c.ip.IsValid() && b.perIP[c.ip] >= b.cfg.MaxConnectionsPerIP:
		return RefusedMaxConnectionsPerIP, false
	}
	b.conns[c] = struct{}{}
	if b.cfg.MaxConnectionsPerIP > 0 && c.ip.IsValid() {
		b.perIP[c.ip]++
	}
	b.wg.Add(1)
	return "", true
}

func (b *Broker) untrack(c *conn) {
	b.mu.Lock()
	b.retire(c)
	delete(b.conns, c)
	if n, ok := b.perIP[c.ip]; ok {
		if n <= 1 {
			delete(b.perIP, c.ip)
		} else {
			b.perIP[c.ip] = n - 1
		}
	}
	b.mu.Unlock()
	b.wg.Done()
}

// Shutdown stops accepting, closes every connection and waits for them to
// finish, or for ctx to end.
func (b *Broker) Shutdown(ctx context.Context) error {
	b.mu.Lock()
	b.closing = true
	for l := range b.listeners {
		l.Close()
	}
	for c := range b.conns {
		c.close(closedByBroker, "broker shutting down", nil)
		c.nc.Close()
	}
	b.mu.Unlock()
	b.cancel()
	b.settle.stop()

	done := make(chan struct{})
	go func() { b.wg.Wait(); close(done) }()
	select {
	case <-done:
		b.logSuppressed(b.sessionLogs.sweep(time.Now(), true))
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// topic returns the channel's topic, creating it if create is set. Topics
// are never removed: they exist only for channels some user was allowed to
// publish or subscribe to, so their number is bounded by the configuration.
func (b *Broker) topic(name []byte, create bool) *topic {
	b.topicsMu.RLock()
	t := b.topics[string(name)]
	b.topicsMu.RUnlock()
	if t != nil || !create {
		return t
	}
	rc := b.retainChannel(string(name)) // may read the store: not under topicsMu
	b.topicsMu.Lock()
	defer b.topicsMu.Unlock()
	if t = b.topics[string(name)]; t == nil {
		t = newTopic(string(name))
		t.ret = rc
		b.topics[t.name] = t
	}
	return t
}

// topic is one channel and its subscribers. Publishers hold the read lock
// while queueing to each subscriber, which never waits on I/O; subscribing
// and unsubscribing take the write lock for O(1) work, so a storm of
// connects or disconnects on a busy channel stays cheap.
type topic struct {
	name string
	mu   sync.RWMutex
	subs []*conn
	idx  map[*conn]int // position in subs
	// gen counts changes to subs, made under mu: a publisher that saw
	// this channel's one subscriber earlier in a read reuses what it saw
	// while gen is unchanged, without mu (conn.queueFanIn).
	gen atomic.Uint64
	// Messages published on this broker that reached no subscriber, here
	// or (with a Bridge) on any other broker.
	undelivered atomic.Uint64
	ret         *retain.Channel // the channel's log if retained (retain.go)
}

func newTopic(name string) *topic {
	return &topic{name: name, idx: map[*conn]int{}}
}

// publish queues raw, a PUBLISH with payload bytes of payload, to every
// subscriber, and reports how many subscribers it found. One subscriber
// (fan-in) gets a copy in its own chunk, made with the read's other
// frames for it (conn.queueFanIn) unless the channel is retained (a
// retained frame is queued under its log's lock, see goLive); more share
// one copy, which the budget counts once (memBudget.share), made for the
// frame and those of the read that follow it for the same channel
// (conn.fanOut) unless the channel is retained. from is the publishing
// connection, nil for frames from the cluster (see sendQueue.push).
func (t *topic) publish(raw []byte, payload int, from *conn) (subs int) {
	if from != nil {
		if f := from.fanIn; f != nil && f.t == t && len(raw) <= copyMax && t.gen.Load() == f.gen {
			// The same one subscriber as this read's frame before:
			// taking the read lock, a store to a line fifty
			// publishers share, cost 5 % of the CPU of fan-in.
			from.queueFanIn(t, f.gen, f.q, raw, payload)
			return 1
		}
	}
	var tooSlow []*conn // rare: allocated only when a subscriber fails
	t.mu.RLock()
	subs = len(t.subs)
	if subs == 1 && from != nil && t.ret == nil && len(raw) <= copyMax {
		q, gen := &t.subs[0].q, t.gen.Load()
		t.mu.RUnlock()
		from.queueFanIn(t, gen, q, raw, payload)
		return subs
	}
	if from != nil && from.fanIn != nil {
		// Frames held for a subscriber go first: it gets a publisher's
		// frames in order.
		if q := from.pushFanIn(); q != nil {
			tooSlow = append(tooSlow, q.c)
		}
	}
	switch {
	case subs > 1 && from != nil && t.ret == nil && len(raw) <= copyMax && from.rd != nil && len(from.rd.Pending()) > 0:
		// More was read behind it: frames for this channel that follow
		// it are queued with it, as one block (conn.fanOut).
		from.startFanOut(t, t.gen.Load(), subs, raw, payload)
	case subs > 0:
		tooSlow = t.queueLocked(raw, 1, payload, from, tooSlow)
	}
	t.mu.RUnlock()
	// Logged without the lock: a slow log sink must not hold up the
	// channel's subscribes and unsubscribes.
	for _, s := range tooSlow {
		s.q.logTooSlow("send queue hard bound reached")
	}
	return subs
}

// queueLocked queues raw, frames PUBLISH frames (one, or a run of them,
// see conn.fanOut) with payload bytes of payload together, to every
// subscriber of t, whose read lock the caller holds. Subscribers closed as
// too slow are appended to tooSlow, for the caller to log without the lock.
func (t *topic) queueLocked(raw []byte, frames, payload int, from *conn, tooSlow []*conn) []*conn {
	var sh *sharedFrame
	frame, mem := raw, &t.subs[0].b.mem
	if len(t.subs) > 1 || len(raw) > copyMax || frames > 1 {
		frame, sh = mem.share(raw)
		sh.frames = uint16(frames)
	}
	taken := 0
	for _, s := range t.subs {
		queued, slow := s.q.push(frame, payload, sh, from)
		if queued {
			taken++
		}
		if slow {
			tooSlow = append(tooSlow, s)
		}
	}
	if sh != nil {
		mem.unshare(frame, sh, taken)
	}
	return tooSlow
}

// add subscribes c and reports whether it is the channel's first
// subscriber.
func (t *topic) add(c *conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.idx[c]; ok {
		return false
	}
	t.idx[c] = len(t.subs)
	t.subs = append(t.subs, c)
	t.gen.Add(1)
	return len(t.subs) == 1
}

// remove unsubscribes c and reports whether it was the channel's last
// subscriber.
func (t *topic) remove(c *conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	i, ok := t.idx[c]
	if !ok {
		return false
	}
	last := len(t.subs) - 1
	t.subs[i] = t.subs[last]
	t.idx[t.subs[i]] = i
	t.subs[last] = nil
	t.subs = t.subs[:last]
	delete(t.idx, c)
	t.gen.Add(1)
	return last == 0
}
