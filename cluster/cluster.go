// Package cluster joins brokers through NATS so that every subscriber gets
// every message published on any broker, exactly once.
//
// Each broker holds one NATS connection. A message published locally is
// delivered locally by the broker and forwarded to NATS as the hpfeeds
// PUBLISH frame's body (ident, channel, payload: the publisher's ident
// travels with the payload; the 5-byte header is left out, so a body of
// --max-publish-size fits a NATS max_payload of the same size) on a
// subject encoding its channel. A broker subscribes on NATS only to
// channels that have local subscribers. The connection is made with NoEcho,
// so a broker never receives its own messages back: nothing is delivered
// twice. One connection publishing in order, and one NATS subscription per
// channel delivering in order, keep each publisher's order per channel.
//
// A message no local subscriber got is forwarded with a reply subject, the
// bridge's own inbox (PREFIX.r and a random token): when no other broker subscribes to its subject,
// NATS answers there with a "503 no responders" status naming the
// subject, and the bridge counts the message as undelivered
// (broker.CountUndelivered). Messages delivered here travel without it.
package cluster

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"unicode"

	"github.com/nats-io/nats.go"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

// Options configure the NATS connection.
type Options struct {
	// URLs is a comma-separated list of NATS servers.
	URLs string
	// Prefix starts every subject, so several hpfeeds networks can share a
	// NATS cluster (default "hpfeeds").
	Prefix string
	// NATS credentials and TLS, passed to nats.go as they are.
	CredsFile, User, Password, Token string
	CAFile, CertFile, KeyFile        string
	Name                             string
	// MustConnect makes New fail when no NATS server answers, rather than
	// retrying in the background (--check-config).
	MustConnect bool
	// MaxBody is the largest PUBLISH body the broker accepts (what goes to
	// NATS); a NATS whose max_payload is smaller is reported when the
	// bridge connects.
	MaxBody int
	// QueueBytes bounds the messages waiting to be forwarded to NATS
	// (default: the larger of 8 MiB and MaxBody). Past it, messages for
	// the cluster are dropped and counted; local delivery goes on.
	QueueBytes int
	Logger     *slog.Logger
}

// Subject is the NATS subject for an hpfeeds channel: the prefix, then "b"
// and the channel in unpadded URL-safe base64. Channels are arbitrary
// bytes; this encoding is one-to-one and never yields '.', '*' or '>'.
// The "b" (body) keeps these messages apart from those of brokers that
// forwarded whole frames on "c" subjects.
func Subject(prefix, channel string) string {
	return prefix + ".b" + base64.RawURLEncoding.EncodeToString([]byte(channel))
}

// channelOf is the channel of a Subject, or false for another subject.
func channelOf(prefix, subject string) (string, bool) {
	enc, ok := strings.CutPrefix(subject, prefix+".b")
	if !ok {
		return "", false
	}
	ch, err := base64.RawURLEncoding.DecodeString(enc)
	return string(ch), err == nil
}

// validPrefix reports whether prefix is one or more literal NATS subject
// tokens.
func validPrefix(prefix string) bool {
	for _, tok := range strings.Split(prefix, ".") {
		if tok == "" || strings.ContainsAny(tok, "*>") || strings.ContainsFunc(tok, unicode.IsSpace) {
			return false
		}
	}
	return true
}

// Stats count what crossed the bridge. ForwardDropped counts messages
// dropped because the forwarding queue was full (NATS not keeping up).
type Stats struct {
	Forwarded, ForwardFailed, ForwardDropped, Received, Rejected uint64
	Connected                                                    bool
}

// DefaultQueueBytes is the smallest default of Options.QueueBytes.
const DefaultQueueBytes = 8 << 20

// Bridge is a broker.Bridge over NATS.
type Bridge struct {
	opts Options
	log  *slog.Logger
	nc   *nats.Conn
	b    atomic.Pointer[broker.Broker]

	mu      sync.Mutex
	subs    map[string]*nats.Subscription
	pending map[string]bool
	wake    chan struct{}
	inbox   string        // the reply subject of messages no local subscriber got
	done    chan struct{} // closed by Close
	synced  chan struct{} // closed when syncInterest has returned
	close   sync.Once

	out     outbox
	forward sync.WaitGroup // the forwarding goroutine

	forwarded, forwardFailed, dropped, received, rejected atomic.Uint64
	// failing is set by the first failed forward of an outage, so an
	// outage is logged once rather than once per message; dropping
	// likewise for a full forwarding queue.
	failing, dropping atomic.Bool
	payloadChecked    atomic.Bool // the first connection's max_payload
	// connected follows nats.go's handlers: asking the connection takes
	// its lock, which a write blocked on a stalled NATS holds.
	connected atomic.Bool
}

// outbox holds the frames published here and not yet handed to NATS,
// back to back in one buffer, so a forward costs a copy and no allocation.
type outbox struct {
	mu    sync.Mutex
	buf   []byte
	msgs  []outMsg
	limit int
	wake  chan struct{}
}

// outMsg is one queued frame: its channel and where it ends in buf.
type outMsg struct {
	channel string
	end     int
	unheard bool // no local subscriber got it
}

// New connects to NATS. A NATS that is down at start is not fatal: the
// bridge keeps trying, and local publish and delivery work meanwhile. One
// that refuses the credentials or the TLS handshake is.
func New(opts Options) (*Bridge, error) {
	if opts.Prefix == "" {
		opts.Prefix = "hpfeeds"
	}
	if !validPrefix(opts.Prefix) {
		return nil, fmt.Errorf("cluster subject prefix %q: use NATS subject tokens (letters, digits, '-', '_', separated by '.'), no spaces or wildcards", opts.Prefix)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.QueueBytes <= 0 {
		opts.QueueBytes = max(DefaultQueueBytes, opts.MaxBody)
	}
	br := &Bridge{opts: opts, log: opts.Logger, subs: map[string]*nats.Subscription{},
		pending: map[string]bool{}, wake: make(chan struct{}, 1), done: make(chan struct{}),
		synced: make(chan struct{})}
	br.out.limit, br.out.wake = opts.QueueBytes, make(chan struct{}, 1)
	no := br.natsOptions()
	// A NATS that cannot be reached yet is retried in the background; one
	// that answers but refuses us is a configuration error, reported now.
	dialer := &recordingDialer{Dialer: net.Dialer{Timeout: nats.DefaultTimeout}}
	no = append(no, nats.SetCustomDialer(dialer))
	nc, err := nats.Connect(opts.URLs, no...)
	if errors.Is(err, nats.ErrNoServers) && !opts.MustConnect {
		br.log.Warn("cluster: NATS unreachable at start-up; local delivery works, retrying", "cluster", Redact(opts.URLs), "err", dialer.lastErr())
		nc, err = nats.Connect(opts.URLs, append(no, nats.RetryOnFailedConnect(true))...)
	}
	if errors.Is(err, nats.ErrNoServers) {
		// nats.go says only "no servers available for connection".
		return nil, fmt.Errorf("%w: %w (is nats-server running and listening there?)", ErrUnreachable, dialer.lastErr())
	}
	if err != nil {
		return nil, fmt.Errorf("joining NATS: %w", err)
	}
	br.nc = nc
	// Under the prefix, so NATS users allowed PREFIX.> only may use it;
	// "r" never starts a channel's token ("b").
	br.inbox = br.opts.Prefix + ".r" + rand.Text()
	if _, err := nc.Subscribe(br.inbox, br.noResponders); err != nil {
		nc.Close()
		return nil, fmt.Errorf("joining NATS: subscribing to this broker's inbox: %w", err)
	}
	// The connect handler runs asynchronously; the connection is up now,
	// and --check-config reports what it finds before it returns.
	if nc.IsConnected() {
		br.connected.Store(true)
		br.checkFirstMaxPayload(nc)
	}
	go br.syncInterest()
	br.forward.Add(1)
	go br.forwardLoop()
	return br, nil
}

// natsOptions are the connection's settings: its handlers log and track
// the connection, and the credential and TLS options.
func (br *Bridge) natsOptions() []nats.Option {
	no := []nats.Option{
		nats.Name(br.opts.Name),
		nats.NoEcho(),
		nats.MaxReconnects(-1),
		// Credentials refused later (say, while being rotated) are logged
		// and retried rather than ending the connection for good.
		nats.IgnoreAuthErrorAbort(),
		// While disconnected, forwarding fails and is counted instead of
		// piling up in a buffer.
		nats.ReconnectBufSize(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			br.connected.Store(false)
			if err != nil { // nil: Close
				br.log.Warn("cluster: disconnected from NATS; local delivery continues, reconnecting", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			br.connected.Store(true)
			br.log.Info("cluster: reconnected to NATS; channel interest restored", "server", nc.ConnectedUrlRedacted())
			br.checkMaxPayload(nc)
		}),
		nats.ConnectHandler(func(nc *nats.Conn) {
			br.connected.Store(true)
			br.log.Info("cluster: connected to NATS", "server", nc.ConnectedUrlRedacted())
			br.checkFirstMaxPayload(nc)
		}),
		nats.ClosedHandler(func(*nats.Conn) {
			br.connected.Store(false)
			br.log.Info("cluster: NATS connection closed")
		}),
		// Slow consumer, permission violation: nats.go would otherwise print
		// them to stderr.
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if sub != nil {
				dropped, _ := sub.Dropped()
				br.log.Warn("cluster: NATS subscription error", "subject", sub.Subject, "dropped", dropped, "err", err)
				return
			}
			br.log.Warn("cluster: NATS error", "err", err)
		}),
	}
	if br.opts.CredsFile != "" {
		no = append(no, nats.UserCredentials(br.opts.CredsFile))
	}
	if br.opts.User != "" {
		no = append(no, nats.UserInfo(br.opts.User, br.opts.Password))
	}
	if br.opts.Token != "" {
		no = append(no, nats.Token(br.opts.Token))
	}
	if br.opts.CAFile != "" {
		no = append(no, nats.RootCAs(br.opts.CAFile))
	}
	if br.opts.CertFile != "" {
		no = append(no, nats.ClientCert(br.opts.CertFile, br.opts.KeyFile))
	}
	return no
}

// recordingDialer dials as nats.go does and keeps the last failure, which
// nats.go reports only as "no servers available".
type recordingDialer struct {
	net.Dialer
	mu   sync.Mutex
	last error
}

func (d *recordingDialer) Dial(network, address string) (net.Conn, error) {
	c, err := d.Dialer.Dial(network, address)
	if err != nil {
		d.mu.Lock()
		d.last = err
		d.mu.Unlock()
	}
	return c, err
}

func (d *recordingDialer) lastErr() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.last == nil {
		return nats.ErrNoServers
	}
	return d.last
}

// ErrUnreachable is returned by New when no NATS server answered and
// Options.MustConnect is set. Any other error of New means a NATS answered
// and refused the connection (credentials, TLS).
var ErrUnreachable = errors.New("no NATS server reachable")

// Redact hides the passwords in a comma-separated list of NATS URLs.
func Redact(urls string) string {
	parts := strings.Split(urls, ",")
	for i, u := range parts {
		parts[i] = auth.Redact(strings.TrimSpace(u))
	}
	return strings.Join(parts, ",")
}

// checkFirstMaxPayload checks the first connection's max_payload once,
// whichever of New and the connect handler gets there first.
func (br *Bridge) checkFirstMaxPayload(nc *nats.Conn) {
	if br.payloadChecked.CompareAndSwap(false, true) {
		br.checkMaxPayload(nc)
	}
}

func (br *Bridge) checkMaxPayload(nc *nats.Conn) {
	if max := nc.MaxPayload(); br.opts.MaxBody > 0 && max < int64(br.opts.MaxBody) {
		br.log.Warn("cluster: NATS max_payload is below the largest PUBLISH this broker accepts: larger messages reach this broker's subscribers only (raise max_payload in the NATS configuration, or lower the largest PUBLISH the broker accepts)",
			"max_payload", max, "max_publish_size", br.opts.MaxBody)
	}
}

// String names the NATS servers and the subject prefix, without passwords.
func (br *Bridge) String() string {
	return Redact(br.opts.URLs) + " (subjects " + br.opts.Prefix + ".>)"
}

// Attach sets the broker that receives messages from the cluster. Call it
// once, before the broker serves.
func (br *Bridge) Attach(b *broker.Broker) {
	br.b.Store(b)
	br.kick()
}

// Forward implements broker.Bridge. It never waits for NATS: the frame is
// copied into a bounded queue that one goroutine hands to NATS, and
// dropped (and counted) when the queue is full, so a NATS that stops
// reading cannot hold a publisher.
func (br *Bridge) Forward(channel string, frame []byte, unheard bool) {
	frame = frame[wire.HeaderLen:] // the body goes to NATS
	o := &br.out
	o.mu.Lock()
	if len(o.buf)+len(frame) > o.limit {
		o.mu.Unlock()
		br.dropped.Add(1)
		if unheard {
			br.undelivered(channel)
		}
		if br.dropping.CompareAndSwap(false, true) {
			br.log.Warn("cluster: NATS is not keeping up; messages published here reach this broker's subscribers only until it does",
				"queue_bytes", o.limit)
		}
		return
	}
	if cap(o.buf)-len(o.buf) < len(frame) {
		// Grow by doubling, never past the limit: a burst must not
		// leave twice the limit behind.
		nb := make([]byte, len(o.buf), min(o.limit, max(2*cap(o.buf), len(o.buf)+len(frame), 64<<10)))
		copy(nb, o.buf)
		o.buf = nb
	}
	o.buf = append(o.buf, frame...)
	o.msgs = append(o.msgs, outMsg{channel, len(o.buf), unheard})
	o.mu.Unlock()
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// forwardLoop is the only goroutine that publishes to NATS. It takes the
// whole queue at once and gives the publishers an empty buffer to fill
// meanwhile, so at most twice the limit is held.
func (br *Bridge) forwardLoop() {
	defer br.forward.Done()
	o := &br.out
	var buf []byte
	var msgs []outMsg
	subjects := map[string]string{} // channels are bounded by the configuration
	for {
		select {
		case <-br.done:
			return
		case <-o.wake:
		}
		o.mu.Lock()
		buf, o.buf = o.buf, buf[:0]
		msgs, o.msgs = o.msgs, msgs[:0]
		o.mu.Unlock()
		start := 0
		for _, m := range msgs {
			subj, ok := subjects[m.channel]
			if !ok {
				subj = Subject(br.opts.Prefix, m.channel)
				subjects[m.channel] = subj
			}
			br.publish(m, subj, buf[start:m.end])
			start = m.end
		}
		clear(msgs)
	}
}

// publish hands one frame to NATS and counts the outcome. While the
// connection is down, Publish fails at once (no reconnect buffer).
func (br *Bridge) publish(m outMsg, subject string, frame []byte) {
	var err error
	if m.unheard {
		err = br.nc.PublishRequest(subject, br.inbox, frame)
	} else {
		err = br.nc.Publish(subject, frame)
	}
	if err != nil {
		br.forwardFailed.Add(1)
		if m.unheard {
			br.undelivered(m.channel)
		}
		// Too large for NATS is explained once at connect time.
		if !errors.Is(err, nats.ErrMaxPayload) && br.failing.CompareAndSwap(false, true) {
			br.log.Warn("cluster: not forwarding to NATS: messages published here reach only this broker's subscribers, and other brokers' subscribers miss them (they are not kept for later), until forwarding resumes",
				"reason", whyNotForwarded(err))
		}
		return
	}
	if br.failing.CompareAndSwap(true, false) {
		br.log.Info("cluster: forwarding to NATS again")
	}
	if br.dropping.CompareAndSwap(true, false) {
		br.log.Info("cluster: NATS keeps up again; forwarding every message")
	}
	br.forwarded.Add(1)
}

// whyNotForwarded says what a failed publish to NATS means.
func whyNotForwarded(err error) string {
	if errors.Is(err, nats.ErrReconnectBufExceeded) || errors.Is(err, nats.ErrConnectionReconnecting) {
		// nats.go's "outbound buffer limit exceeded": the buffer for
		// reconnection is off on purpose.
		return "the NATS connection is down and being re-made"
	}
	return err.Error()
}

// InterestChanged implements broker.Bridge: it notes the channel and lets
// the interest goroutine bring the NATS subscription in line.
func (br *Bridge) InterestChanged(channel string) {
	br.mu.Lock()
	br.pending[channel] = true
	br.mu.Unlock()
	br.kick()
}

func (br *Bridge) kick() {
	select {
	case br.wake <- struct{}{}:
	default:
	}
}

// syncInterest subscribes on NATS to channels with local subscribers and
// drops the others, reading the broker's current state, so changes that
// race each other settle on the truth.
func (br *Bridge) syncInterest() {
	defer close(br.synced)
	for {
		select {
		case <-br.done:
			return
		case <-br.wake:
		}
		b := br.b.Load()
		if b == nil {
			continue // Attach wakes us again.
		}
		br.mu.Lock()
		pending := br.pending
		br.pending = map[string]bool{}
		br.mu.Unlock()
		for ch := range pending {
			want := b.HasSubscribers(ch)
			sub, have := br.subs[ch]
			switch {
			case want && !have:
				s, err := br.nc.Subscribe(Subject(br.opts.Prefix, ch), br.deliver)
				if err != nil {
					br.log.Error("cluster: cannot subscribe", "channel", ch, "err", err)
					continue
				}
				s.SetPendingLimits(-1, 64<<20)
				br.subs[ch] = s
			case !want && have:
				sub.Unsubscribe()
				delete(br.subs, ch)
			}
		}
	}
}

// deliver hands a PUBLISH body from NATS to the broker as a frame: one
// allocation per message, shared by all its local subscribers.
func (br *Bridge) deliver(m *nats.Msg) {
	b := br.b.Load()
	frame := make([]byte, wire.HeaderLen+len(m.Data))
	binary.BigEndian.PutUint32(frame, uint32(len(frame)))
	frame[4] = byte(wire.OpPublish)
	copy(frame[wire.HeaderLen:], m.Data)
	if b == nil || !b.DeliverRemote(frame) {
		br.rejected.Add(1)
		return
	}
	br.received.Add(1)
}

// noResponders receives NATS's answer to a message no local subscriber
// got when no other broker subscribes to its subject either.
func (br *Bridge) noResponders(m *nats.Msg) {
	if m.Header.Get("Status") != "503" {
		return
	}
	if ch, ok := channelOf(br.opts.Prefix, m.Header.Get("Nats-Subject")); ok {
		br.undelivered(ch)
	}
}

func (br *Bridge) undelivered(channel string) {
	if b := br.b.Load(); b != nil {
		b.CountUndelivered(channel)
	}
}

// Stats returns the counts so far.
func (br *Bridge) Stats() Stats {
	return Stats{
		Forwarded: br.forwarded.Load(), ForwardFailed: br.forwardFailed.Load(), ForwardDropped: br.dropped.Load(),
		Received: br.received.Load(), Rejected: br.rejected.Load(),
		Connected: br.connected.Load(),
	}
}

// Close leaves the cluster, dropping what is still queued. NATS drops this
// broker's interest with the connection. It returns once the interest and
// forwarding goroutines have stopped, so nothing touches NATS or the
// broker afterwards.
func (br *Bridge) Close() {
	br.close.Do(func() {
		close(br.done)
		<-br.synced
		br.nc.Close()
		br.forward.Wait()
	})
}

// Conn is the bridge's NATS connection, which retained channels share to
// reach JetStream (package retain).
func (br *Bridge) Conn() *nats.Conn { return br.nc }
