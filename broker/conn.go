package broker

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

// Mode restricts what an endpoint's clients may do.
type Mode uint8

const (
	// ModePubSub allows both publishing and subscribing (the default).
	ModePubSub Mode = iota
	// ModePublish is a push-only endpoint: SUBSCRIBE is refused.
	ModePublish
	// ModeSubscribe is a pull-only endpoint: PUBLISH is refused.
	ModeSubscribe
)

func (m Mode) String() string {
	switch m {
	case ModePublish:
		return "publish"
	case ModeSubscribe:
		return "subscribe"
	}
	return "pubsub"
}

// Error categories, as the metric hpfeeds_broker_connection_error labels them.
const (
	CategoryInvalidFirstMessage  = "invalid-first-message"
	CategoryInvalidIdent         = "invalid-ident"
	CategoryInvalidSecret        = "invalid-secret"
	CategoryErrorCheckingIdent   = "error-checking-ident"
	CategoryIdentMismatchPub     = "ident-mismatch-pub"
	CategoryNoPubPermission      = "no-pub-permission"
	CategoryNoSubPermission      = "no-sub-permission"
	CategoryDeadlineTimerExpired = "deadline-timer-expired"
)

// session is what AUTH established. It never changes once stored; when
// the store changes the user's channels, revalidation stores a new one.
type session struct {
	ident    []byte
	identStr string
	owner    string
	// Checked once per channel and connection (publish caches the
	// result), so plain lists cost less memory than sets.
	pub, sub []string
	secret   [sha256.Size]byte // a digest, so a changed secret is noticed without keeping it
}

func newSession(u auth.User) *session {
	return &session{
		ident:    []byte(u.Ident),
		identStr: u.Ident,
		owner:    u.Owner,
		pub:      u.PubChans,
		sub:      u.SubChans,
		secret:   sha256.Sum256([]byte(u.Secret)),
	}
}

func allowed(list []string, channel []byte) bool {
	for _, c := range list {
		if c == string(channel) {
			return true
		}
	}
	return false
}

// conn is one client connection. Its reader goroutine (serve) owns the
// session state; its writer goroutine (writeLoop, started while there is
// something to send) owns the socket's writes.
type conn struct {
	b     *Broker
	nc    net.Conn
	ip    netip.Addr // the peer's address; invalid for non-TCP listeners
	mode  Mode
	nonce [wire.NonceLen]byte

	id       uint64    // unique within the broker, in accept order
	since    time.Time // accepted
	addr     string    // the peer's address, for status pages and logs
	endpoint string    // the listener's endpoint, for status pages and logs

	sess   atomic.Pointer[session]     // nil until authenticated
	reason atomic.Pointer[closeReason] // set once the connection is closing; the first cause wins
	// The session c.pubs and c.subs were last checked against: when
	// revalidation stores another, the reader rechecks them (follow).
	checked *session

	// Owned by the reader goroutine; made on first use, as most
	// connections only publish or only subscribe.
	subs []*topic
	pubs map[string]*pubChan // pubchans already checked, with their topic
	// The same pubChans in a slice, for scrapes and status requests, which
	// walk every connection's: a slice costs less to iterate than a map.
	pubList []*pubChan
	// pubMu orders the reader's changes to pubs, pubList and subs with
	// scrapes, which so never take a channel's lock (editSubs); the reader
	// itself reads them without it.
	pubMu sync.Mutex

	// Writers this reader has queued frames for and must wake before it
	// next blocks reading (see wakeWriters).
	later []wakeup
	// fanned is set when a frame of this read went to several
	// subscribers: their writers then write in parallel, none inline,
	// unless the read brought few bytes (readBytes).
	fanned    bool
	readBytes int // PUBLISH bytes in this read
	// fanIn is frames of this read for one subscriber alone, not yet
	// queued (queueFanIn); nil if none. fanOut is a run of this read's
	// frames for one channel with several subscribers, not yet queued;
	// nil if none. At most one of them is set at a time.
	fanIn  *fanIn
	fanOut *fanOut
	// credit is what the reader charged the budget ahead for the copies
	// it has still to queue from this read (chargeCopy).
	credit int

	// Flow control and the memory budget (flow.go), owned by the reader.
	rd           *wire.Reader
	buffered     atomic.Int64    // the reader's buffer, as counted in the budget
	outgrownAt   atomic.Int64    // broker clock when the frame in progress outgrew the buffer; 0: it fits
	evicted      atomic.Bool     // closed by enforceBudget for its partial frame
	stalls       []chan struct{} // stalled queues pushed to since the last read
	readCap      int             // bytes the next read may take; 0: no cap
	pauseTimer   *time.Timer
	framed       bool      // authenticated: the frame deadline applies
	frameSince   time.Time // when the frame in progress was first seen
	frameSeq     uint64    // rd.Frames() then: a change means a new frame
	headChecked  bool      // the large PUBLISH in progress passed its checks
	readDeadline time.Time // armed for a frame in progress; zero if none

	q     sendQueue
	stats connStats
}

// connStats are counted per connection so the hot path touches no shared
// map; metrics sum them per ident at scrape time.
type connStats struct {
	recvBytes        atomic.Uint64 // bytes read from the socket
	recvAtAuth       atomic.Uint64 // recvBytes when AUTH succeeded
	parsedBytes      atomic.Uint64 // bytes of the frames read so far
	sentBytes        atomic.Uint64 // bytes written to the socket
	sentFrames       atomic.Uint64 // frames written whole
	writes           atomic.Uint64 // write syscalls (batches)
	ctrlFrames       atomic.Uint64 // frames read other than PUBLISH (those count per channel)
	deadlineStarts   atomic.Uint64
	deadlineRecovers atomic.Uint64
	flowPauses       atomic.Uint64 // reads held for stalled subscribers
	memoryPauses     atomic.Uint64 // reads held for the memory budget
}

func newConn(b *Broker, nc net.Conn, mode Mode, endpoint string) *conn {
	c := &conn{b: b, nc: nc, mode: mode, endpoint: endpoint, since: time.Now(), id: b.nextID.Add(1),
		addr: nc.RemoteAddr().String()}
	if a, ok := nc.RemoteAddr().(*net.TCPAddr); ok {
		c.ip = a.AddrPort().Addr().Unmap()
	}
	c.q.init(c)
	return c
}

func (c *conn) log() *slog.Logger {
	l := c.b.cfg.Logger.With("peer", c.addr)
	if s := c.sess.Load(); s != nil {
		l = l.With("ident", s.identStr)
	}
	return l
}

func (c *conn) serve() {
	c.b.stats.connectionMade()
	if !c.handshake() {
		c.nc.Close()
		c.finish()
		return
	}
	if ok, err := c.login(); !ok {
		c.end(err)
		return
	}
	// The session's frames are read on a fresh goroutine: logging in (the
	// credential lookup, the login line) grows a stack that an idle
	// session, most connections, would otherwise keep for its lifetime.
	go c.readLoop()
}

// end tears down a connection whose reader stopped with err.
func (c *conn) end(err error) {
	c.flushRead()
	c.wakeWriters()
	c.ended(err)
	if c.reason.Load().state == closedReadError {
		c.log().Debug("connection closed", "err", err)
	}
	c.b.retainEnd(c, nil) // retain.go: saves positions while the socket can say what was acked
	for _, t := range c.subs {
		if t.remove(c) {
			c.b.interestChanged(t.name)
		}
	}
	c.q.abort()
	<-c.q.done
	c.b.mem.setBuffer(c, 0)
	c.rd.Release() // a partial frame's chunks serve other readers
	c.finish()
}

// finish counts the connection's end and forgets it.
func (c *conn) finish() {
	ident := ""
	if s := c.sess.Load(); s != nil {
		ident = s.identStr
		c.logDisconnect(s)
	}
	c.b.stats.connectionLost(ident)
	c.b.untrack(c)
}

// closedState is why a connection ended, as nats-server's ClosedState
// says it: one typed path (close) records it and stops the reader.
type closedState uint8

const (
	closedByClient     closedState = iota + 1 // the client hung up
	closedByBroker                            // shutdown
	closedReadError                           // the socket or the frames read failed
	closedProtocol                            // an ERROR was sent: a refused frame or login
	closedRevoked                             // the store no longer accepts the session
	closedSlowConsumer                        // closed for backpressure
	closedMemoryBudget                        // its partial frame was evicted
	closedFrameTimeout                        // a frame not completed in time
)

// closeReason is a closedState and the words the logs and status pages show.
type closeReason struct {
	state closedState
	text  string
}

// errClosing ends the reading of a connection that is being closed.
var errClosing = errors.New("connection closing")

// close is the one way a connection is closed. It records why, unless a
// cause already was; with last, the writer sends what is queued and then
// last (an ERROR) within the flush timeout, and closes; and it stops the
// reader, so nothing the client sends afterwards is acted on. Paths that
// close the writer themselves (failLocked, which drops the queue; the
// socket closed at once) give no last.
func (c *conn) close(state closedState, text string, last []byte) {
	// The text may quote a client: a refused channel, a spoofed ident.
	first := c.reason.CompareAndSwap(nil, &closeReason{state, logText(text)})
	if last != nil {
		c.q.closeWith(last)
	}
	if first {
		// Wakes a reader blocked in Read (after the writer knows it
		// is closing: the reader's exit aborts what is not). Read
		// checks closing after any deadline of its own, so this one
		// wins.
		c.nc.SetReadDeadline(time.Now())
	}
}

// closing reports whether the connection is being closed.
func (c *conn) closing() bool { return c.reason.Load() != nil }

// ended records why the reader stopped, if nothing before it said why.
func (c *conn) ended(err error) {
	switch {
	case err == nil:
		c.close(closedByBroker, "closed by the broker", nil)
	case errors.Is(err, io.EOF):
		c.close(closedByClient, "closed by the client", nil)
	case errors.Is(err, net.ErrClosed):
		c.close(closedByBroker, "closed by the broker", nil)
	default:
		c.close(closedReadError, err.Error(), nil)
	}
}

// Reason is why the connection ended, once it has.
func (c *conn) Reason() string {
	if r := c.reason.Load(); r != nil {
		return r.text
	}
	return ""
}

// logDisconnect writes the INFO line an operator reads next to the login's.
func (c *conn) logDisconnect(s *session) {
	c.logSession("disconnect", "ident", s.identStr, "addr", c.addr,
		"duration", time.Since(c.since).Round(time.Millisecond), "reason", c.Reason(),
		"frames_in", c.framesIn(), "frames_out", c.stats.sentFrames.Load())
}

// handshake completes TLS if needed and sends INFO in a single write (the
// Python client expects the whole INFO from one recv).
func (c *conn) handshake() bool {
	cfg := &c.b.cfg
	c.nc.SetDeadline(time.Now().Add(cfg.AuthTimeout))
	if tc, ok := c.nc.(*tls.Conn); ok {
		if err := tc.Handshake(); err != nil {
			c.handshakeFailed(err)
			return false
		}
	}
	rand.Read(c.nonce[:]) // never fails: crypto/rand crashes the program rather than return weak bytes
	info, err := wire.AppendInfo(make([]byte, 0, 64), cfg.Name, c.nonce)
	if err != nil {
		panic(err) // Name was checked by New
	}
	if _, err := c.nc.Write(info); err != nil {
		c.log().Debug("sending INFO failed", "err", err)
		return false
	}
	c.nc.SetWriteDeadline(time.Time{})
	return true
}

// login reads the first frame, which must be AUTH, and authenticates it.
// Frames that arrive behind AUTH wait in the reader's buffer while the
// credential lookup runs, then readLoop handles them in order. It reports
// whether the session is established, or else the read error that ended it.
func (c *conn) login() (bool, error) {
	b := c.b
	rd := wire.NewReader(c, b.preAuth)
	c.rd = rd
	f, err := rd.Next()
	if err != nil {
		// A too-large first frame that is not AUTH still gets the
		// reference's answer: its header says enough.
		if errors.Is(err, wire.ErrTooLarge) && f.Op.Valid() && f.Op != wire.OpAuth {
			c.fail("", CategoryInvalidFirstMessage, wire.ErrFirstNotAuth)
			return false, nil
		}
		return false, err
	}
	if f.Op != wire.OpAuth {
		c.fail("", CategoryInvalidFirstMessage, wire.ErrFirstNotAuth)
		return false, nil
	}
	c.stats.parsedBytes.Add(uint64(len(f.Raw)))
	if !c.authenticate(&f) {
		return false, nil
	}
	c.nc.SetReadDeadline(time.Time{})
	rd.Limits = b.postAuth
	c.framed = true
	return true, nil
}

// readLoop reads an authenticated session's frames until it ends.
func (c *conn) readLoop() {
	for {
		// Waiting apart from decoding keeps the idle reader's stack
		// shallow (see wire.Reader.Wait).
		if !c.rd.Ready() {
			if c.fanIn != nil || c.fanOut != nil {
				c.flushRead() // before the read moves the frames they hold
			}
			if err := c.rd.Wait(); err != nil {
				c.end(err)
				return
			}
		}
		ok, ctrl, err := c.handleNext()
		if !ok {
			c.end(err)
			return
		}
		if ctrl && len(c.rd.Pending()) == 0 {
			// Handling a SUBSCRIBE grows the stack past the 2 KiB a
			// goroutine starts with, and a stack in use never shrinks
			// back: the next frame, often hours away, is awaited on a
			// fresh goroutine. Control frames are rare, so this costs
			// nothing on the publish path.
			go c.readLoop()
			return
		}
	}
}

// handleNext acts on the buffered frame, and reports whether the session
// goes on and whether the frame was other than a PUBLISH.
//
//go:noinline
func (c *conn) handleNext() (ok, ctrl bool, err error) {
	var f wire.Frame
	if err := c.rd.NextInto(&f); err != nil {
		return false, false, err
	}
	if c.closing() {
		// Closed (revoked, too slow, evicted) while this frame was
		// in the buffer: it is not acted on.
		return false, false, errClosing
	}
	c.stats.parsedBytes.Add(uint64(len(f.Raw)))
	switch f.Op {
	case wire.OpPublish:
		ok = c.publish(&f)
	case wire.OpSubscribe:
		// A run held for a channel goes to its subscribers before
		// this one joins them.
		c.flushFanOut()
		ok = c.subscribe(&f)
	case wire.OpUnsubscribe:
		c.flushFanOut()
		c.unsubscribe(&f)
		ok = true
	default:
		// AUTH, INFO or ERROR from an authenticated client: the
		// reference's session crashes on these; close it cleanly.
		c.log().Debug("unexpected frame after authentication; closing", "op", f.Op)
		c.close(closedProtocol, "unexpected frame after authentication", nil)
	}
	return ok, f.Op != wire.OpPublish, nil
}

func (c *conn) authenticate(f *wire.Frame) bool {
	b := c.b
	ident := string(f.Ident)
	if err := auth.CheckIdent(ident); err != nil {
		if c.admitLogin(ident, "") {
			c.refuseLogin(ident, CategoryInvalidIdent, err.Error()) // no store could hold it: not a store failure
		}
		return false
	}
	ctx, cancel := context.WithTimeout(b.ctx, b.cfg.LookupTimeout)
	u, found, err := auth.Find(ctx, b.cfg.Auth, ident)
	cancel()
	// Failed logins are counted without their ident: a client that never
	// authenticates must not be able to create label values.
	switch {
	case err != nil:
		if n, ok := b.lookupFailures.due(time.Now()); ok {
			c.log().Warn("credential lookup failed; the login is refused (further failures are logged at most every 10 s)",
				"ident", logIdent(ident), "store", b.cfg.Auth.String(), "err", err, "failed", n)
		}
		c.fail("", CategoryErrorCheckingIdent, wire.AuthFailed(ident))
		return false
	case !c.admitLogin(ident, u.Ident): // u.Ident is "" when not found
		return false
	case !found:
		c.refuseLogin(ident, CategoryInvalidIdent, "unknown ident")
		return false
	case !u.Verify(c.nonce[:], f.Payload):
		c.refuseLogin(ident, CategoryInvalidSecret, "wrong secret")
		return false
	}
	b.throttle.done(c.ip, true, time.Now())
	s := newSession(u) // u.Ident is ident, byte for byte (auth.Find)
	c.stats.recvAtAuth.Store(c.stats.recvBytes.Load())
	c.checked = s
	c.sess.Store(s)
	c.stats.ctrlFrames.Add(1)
	b.stats.connectionReady(s.identStr)
	b.loggedIn(c, s)
	c.logSession("login", "ident", s.identStr, "owner", s.owner,
		"addr", c.addr, "endpoint", c.endpoint)
	return true
}

// pubChan checks that c may publish to channel as ident, and returns the
// channel; it fails the connection and returns nil if not.
func (c *conn) pubChan(ident, channel []byte) *pubChan {
	s := c.sess.Load()
	if s != c.checked {
		c.follow(s)
	}
	if !bytes.Equal(ident, s.ident) {
		c.fail(s.identStr, CategoryIdentMismatchPub, wire.IdentMismatch(string(ident)))
		return nil
	}
	p := c.pubs[string(channel)]
	if p == nil || p.revoked {
		if !allowed(s.pub, channel) || c.mode == ModeSubscribe {
			c.fail(s.identStr, CategoryNoPubPermission,
				wire.NotAllowed(wire.ErrNoPublishPrefix, s.identStr, string(channel)))
			return nil
		}
		p = &pubChan{t: c.b.topic(channel, true)}
		c.pubMu.Lock()
		if c.pubs == nil {
			c.pubs = map[string]*pubChan{}
		}
		c.pubs[p.t.name] = p
		c.pubList = append(c.pubList, p)
		c.pubMu.Unlock()
	}
	return p
}

func (c *conn) publish(f *wire.Frame) bool {
	p := c.pubChan(f.Ident, f.Channel)
	if p == nil {
		return false
	}
	p.observe(len(f.Payload), c.b.clock.Load())
	// The frame already carries the authenticated ident, so the received
	// bytes are exactly what every subscriber gets.
	var subs int
	if o := c.fanOut; o != nil && o.takes(p.t, f.Raw) {
		subs = o.add(f.Raw, len(f.Payload))
	} else {
		if o != nil {
			c.flushFanOut()
		}
		subs = c.b.deliver(p.t, f.Raw, len(f.Payload), c)
	}
	c.fanned = c.fanned || subs > 1
	c.readBytes += len(f.Raw)
	switch br := c.b.cfg.Bridge; {
	case br != nil:
		br.Forward(p.t.name, f.Raw, subs == 0)
	case subs == 0:
		p.t.undelivered.Add(1)
	}
	return true
}

func (c *conn) subscribe(f *wire.Frame) bool {
	c.stats.ctrlFrames.Add(1)
	s := c.sess.Load()
	if s != c.checked {
		c.follow(s)
	}
	if !allowed(s.sub, f.Channel) || c.mode == ModePublish {
		c.fail(s.identStr, CategoryNoSubPermission,
			wire.NotAllowed(wire.ErrNoSubscribePrefix, s.identStr, string(f.Channel)))
		return false
	}
	if c.subscribed(f.Channel) >= 0 {
		return true
	}
	t := c.b.topic(f.Channel, true)
	if c.subscribeRetained(t) { // retain.go: catch-up first, then live
		c.subs = append(c.subs, t)
		return true
	}
	if t.add(c) {
		c.b.interestChanged(t.name)
	}
	// Revalidation may have narrowed the channels since s was loaded and
	// missed this subscription; it stored the session before it looked.
	if ns := c.sess.Load(); ns != s && !allowed(ns.sub, f.Channel) {
		if t.remove(c) {
			c.b.interestChanged(t.name)
		}
		return true
	}
	c.editSubs(func(subs []*topic) []*topic { return append(subs, t) })
	return true
}

// subscribed is the index of channel in c.subs, or -1. A slice, not a map:
// a connection holds few subscriptions (no more than its subchans, which
// are searched linearly anyway), and idle subscribers are most of memory.
func (c *conn) subscribed(channel []byte) int {
	for i, t := range c.subs {
		if t.name == string(channel) {
			return i
		}
	}
	return -1
}

func (c *conn) unsubscribe(f *wire.Frame) {
	c.stats.ctrlFrames.Add(1)
	if i := c.subscribed(f.Channel); i >= 0 {
		c.b.retainEnd(c, c.subs[i])
		if c.subs[i].remove(c) {
			c.b.interestChanged(c.subs[i].name)
		}
		c.editSubs(func(subs []*topic) []*topic { return slices.Delete(subs, i, i+1) })
	}
}

// refuseLogin answers a failed login that admitLogin let through. Its log
// line is rate-limited per reason, as clients choose how many they cause;
// the failure counts against the source (see throttle.go). The store is not
// to blame, so lookups that fail do not come here.
func (c *conn) refuseLogin(ident, category, reason string) {
	b := c.b
	now := time.Now()
	if n, ok := b.failedLogins.due(reason, now); ok {
		c.log().Info("authentication failed: "+reason+" (further failures for this reason are logged at most every 10 s)",
			"ident", logIdent(ident), "failed", n)
	}
	if b.throttle.done(c.ip, false, now) {
		c.throttleStarted(now)
	}
	c.fail("", category, wire.AuthFailed(ident))
}

// fail sends an ERROR after whatever is already queued and closes the
// connection; ident labels the metric and is empty before authentication.
func (c *conn) fail(ident, category, msg string) {
	c.b.stats.connectionError(ident, category)
	c.log().Debug("closing connection with error", "category", category, "error", logText(msg))
	c.close(closedProtocol, msg, wire.AppendError(nil, msg))
}

// wakeWriters wakes the writers of the subscribers this connection queued
// frames for (or writes to them itself, flushInline: to a single one, or
// a small read to a few), and gives back the budget it charged ahead and
// did not use.
// The reader calls it before each read, so a burst of publishes costs each
// subscriber one wake-up.
func (c *conn) wakeWriters() {
	switch {
	case len(c.later) == 1 && !c.fanned:
		// One subscriber (fan-in, or one to one): written from here.
		if c.later[0].q.flushInline(c.later[0].start) {
			c.later[0] = wakeup{}
			c.later = c.later[:0]
		}
	case c.readBytes <= inlineFanOutBytes && len(c.later) <= inlineFanOut:
		// A few frames to a few subscribers, as at a moderate rate: a
		// writev each from here costs less than waking their writers.
		// A burst fans out to writers that write in parallel.
		for i, w := range c.later {
			if !w.q.flushInline(w.start) {
				w.q.kick(w.start, !w.start)
			}
			c.later[i] = wakeup{}
		}
		c.later = c.later[:0]
	}
	c.fanned, c.readBytes = false, 0
	for i, w := range c.later {
		w.q.kick(w.start, !w.start)
		c.later[i] = wakeup{}
	}
	c.later = c.later[:0]
	if c.credit > 0 {
		c.b.mem.release(c.credit)
		c.credit = 0
	}
}

// fanIn is frames a publisher read for one subscriber alone (a channel
// with one subscriber, or several such channels with the same one), queued
// to it together (sendQueue.pushAll): a burst of fan-in takes the queue's
// lock, which the subscriber's writer takes too, once per read rather than
// once per frame. The frames alias the reader's buffer, so they are queued
// before it reads again.
type fanIn struct {
	q       *sendQueue
	frames  [][]byte
	payload int
	// The channel of the last frame, whose one subscriber q was when its
	// gen was this.
	t   *topic
	gen uint64
}

// fanInMax bounds the frames a fanIn holds.
const fanInMax = 64

var fanInPool = sync.Pool{New: func() any { return &fanIn{frames: make([][]byte, 0, fanInMax)} }}

// queueFanIn queues frame, a PUBLISH with payload bytes of payload, to q,
// the one subscriber of t when t's gen was gen, with the frames of this
// read for q that follow it. A frame with nothing read behind it is queued
// at once: a publisher that sends one frame at a time holds no fanIn.
func (c *conn) queueFanIn(t *topic, gen uint64, q *sendQueue, frame []byte, payload int) {
	f := c.fanIn
	if f != nil && f.q != q {
		c.flushFanIn() // a subscriber gets a publisher's frames in order
		f = nil
	}
	if f == nil {
		if c.rd == nil || len(c.rd.Pending()) == 0 {
			if _, tooSlow := q.push(frame, payload, nil, c); tooSlow {
				q.logTooSlow("send queue hard bound reached")
			}
			return
		}
		f = fanInPool.Get().(*fanIn)
		f.q = q
		c.fanIn = f
	}
	f.frames = append(f.frames, frame)
	f.payload += payload
	f.t, f.gen = t, gen
	if len(f.frames) == fanInMax {
		c.flushFanIn()
	}
}

// pushFanIn queues the frames fanIn holds. It returns their queue if that
// closed its subscriber as too slow, for the caller to log once it holds no
// lock.
func (c *conn) pushFanIn() (tooSlow *sendQueue) {
	f := c.fanIn
	if f == nil {
		return nil
	}
	c.fanIn = nil
	if _, slow := f.q.pushAll(f.frames, f.payload, false, c); slow {
		tooSlow = f.q
	}
	clear(f.frames)
	*f = fanIn{frames: f.frames[:0]}
	fanInPool.Put(f)
	return tooSlow
}

// flushFanIn is pushFanIn for a caller that holds no lock.
func (c *conn) flushFanIn() {
	if q := c.pushFanIn(); q != nil {
		q.logTooSlow("send queue hard bound reached")
	}
}

// fanOut is a run of PUBLISH frames a publisher read for one channel with
// several subscribers, side by side in the reader's buffer: they are
// queued as one shared block (queueLocked), so a burst of fan-out
// allocates, copies and takes each subscriber's lock once per run rather
// than once per frame, and each writer sends the block as one piece. The
// run aliases the reader's buffer, so it is queued before the reader reads
// again, before a frame that goes anywhere else, and before a SUBSCRIBE or
// UNSUBSCRIBE of this connection. It goes to the channel's subscribers of
// when it is queued: one that joins after its last frame and before then
// gets it, as if the broker had read its SUBSCRIBE first.
type fanOut struct {
	t       *topic
	gen     uint64 // t's gen when the run began
	subs    int    // t's subscribers then
	run     []byte
	frames  int
	payload int
}

// fanOutMax bounds a run's bytes: a block is at most a read's worth.
const fanOutMax = 64 << 10

var fanOutPool = sync.Pool{New: func() any { return new(fanOut) }}

// startFanOut holds frame, a PUBLISH for t's subs subscribers when t's gen
// was gen, for the frames of this read for t that follow it.
func (c *conn) startFanOut(t *topic, gen uint64, subs int, frame []byte, payload int) {
	o := fanOutPool.Get().(*fanOut)
	*o = fanOut{t: t, gen: gen, subs: subs, run: frame, frames: 1, payload: payload}
	c.fanOut = o
}

// takes reports whether frame, a PUBLISH for t, extends the run: the
// frame follows it in the buffer and t's subscribers are unchanged.
func (o *fanOut) takes(t *topic, frame []byte) bool {
	return o.t == t && len(frame) <= copyMax && len(o.run)+len(frame) <= fanOutMax &&
		adjacent(o.run, frame) && t.gen.Load() == o.gen
}

// add extends the run by frame, which takes said it may; it returns the
// subscribers the run goes to.
func (o *fanOut) add(frame []byte, payload int) int {
	o.run = o.run[:len(o.run)+len(frame)]
	o.frames++
	o.payload += payload
	return o.subs
}

// flushRead queues what this read's frames left held, for fan-in and for
// fan-out.
func (c *conn) flushRead() {
	c.flushFanIn()
	c.flushFanOut()
}

// flushFanOut queues the run fanOut holds to its channel's subscribers.
func (c *conn) flushFanOut() {
	o := c.fanOut
	if o == nil {
		return
	}
	c.fanOut = nil
	t := o.t
	var tooSlow []*conn
	t.mu.RLock()
	if len(t.subs) > 0 {
		tooSlow = t.queueLocked(o.run, o.frames, o.payload, c, nil)
	}
	t.mu.RUnlock()
	for _, s := range tooSlow {
		s.q.logTooSlow("send queue hard bound reached")
	}
	*o = fanOut{}
	fanOutPool.Put(o)
}

// A read of at most inlineFanOutBytes of PUBLISH frames that went to at
// most inlineFanOut subscribers is written to them by the publisher
// (wakeWriters).
const (
	inlineFanOut      = 64
	inlineFanOutBytes = 16 << 10
)

// chargeCopy counts n bytes this reader copied into a subscriber's queue.
// The budget is charged ahead for the rest of the read: the bytes still
// pending in the reader bound what it can copy before reading again, so a
// burst of fan-in updates the shared count once per read rather than once
// per frame, and the count never runs behind the writers' releases.
func (c *conn) chargeCopy(n int) {
	if c.credit < n {
		grant := n
		if c.rd != nil {
			grant += len(c.rd.Pending())
		}
		c.b.mem.charge(grant)
		c.credit += grant
	}
	c.credit -= n
}
