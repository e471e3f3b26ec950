package broker_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

// rawClient speaks the wire protocol by hand so tests control every byte.
type rawClient struct {
	t     testing.TB
	nc    net.Conn
	rd    *wire.Reader
	nonce []byte
	name  string
}

func dial(t testing.TB, addr string) *rawClient {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return newRawClient(t, nc)
}

// newRawClient reads INFO on a fresh connection.
func newRawClient(t testing.TB, nc net.Conn) *rawClient {
	t.Helper()
	c := &rawClient{t: t, nc: nc, rd: wire.NewReader(nc, wire.UniformLimits(64<<20))}
	f := c.next()
	if f.Op != wire.OpInfo {
		t.Fatalf("first frame is %v, want INFO", f.Op)
	}
	c.name = string(f.Ident)
	c.nonce = append([]byte(nil), f.Payload...)
	return c
}

// login dials and authenticates.
func login(t testing.TB, addr, ident, secret string) *rawClient {
	c := dial(t, addr)
	c.send(c.auth(ident, secret))
	return c
}

func (c *rawClient) auth(ident, secret string) []byte {
	b, err := wire.AppendAuth(nil, c.nonce, ident, secret)
	if err != nil {
		c.t.Fatal(err)
	}
	return b
}

func (c *rawClient) send(frames ...[]byte) {
	c.t.Helper()
	c.nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.nc.Write(bytes.Join(frames, nil)); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// next returns the next frame, passing over other clients' sync pings.
func (c *rawClient) next() wire.Frame {
	c.t.Helper()
	for {
		f := c.readFrame()
		if !isSync(f) {
			return f
		}
	}
}

func (c *rawClient) readFrame() wire.Frame {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	f, err := c.rd.Next()
	if err != nil {
		c.t.Fatalf("reading a frame: %v", err)
	}
	return f
}

func isSync(f wire.Frame) bool { return f.Op == wire.OpPublish && string(f.Channel) == "sync" }

func short(b []byte) string {
	if len(b) > 40 {
		return fmt.Sprintf("%q… (%d bytes)", b[:40], len(b))
	}
	return fmt.Sprintf("%q", b)
}

// expectMessage reads one PUBLISH and checks it.
func (c *rawClient) expectMessage(ident, channel, payload string) {
	c.t.Helper()
	f := c.next()
	if f.Op != wire.OpPublish || string(f.Ident) != ident || string(f.Channel) != channel || string(f.Payload) != payload {
		c.t.Fatalf("got %v ident=%q chan=%q payload=%s; want PUBLISH %q %q %s",
			f.Op, f.Ident, f.Channel, short(f.Payload), ident, channel, short([]byte(payload)))
	}
}

// expectError reads an ERROR with text want, then the end of the stream.
func (c *rawClient) expectError(want string) {
	c.t.Helper()
	f := c.next()
	if f.Op != wire.OpError || string(f.Payload) != want {
		c.t.Fatalf("got %v %q, want ERROR %q", f.Op, f.Payload, want)
	}
	c.expectClosed()
}

// expectClosed reads until the broker closes the connection.
func (c *rawClient) expectClosed() {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := c.rd.Next()
		if err == nil {
			if f.Op == wire.OpPublish {
				continue // deliveries queued before the close
			}
			c.t.Fatalf("got %v %s, want the connection closed", f.Op, short(f.Payload))
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isReset(err) {
			return
		}
		c.t.Fatalf("want the connection closed, got %v", err)
	}
}

func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}

// expectSilence checks that nothing but sync pings arrives for a short while.
func (c *rawClient) expectSilence() {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(150 * time.Millisecond))
	for {
		f, err := c.rd.Next()
		if err == nil && isSync(f) {
			continue
		}
		var ne net.Error
		if err == nil || !errors.As(err, &ne) || !ne.Timeout() {
			c.t.Fatalf("expected nothing, got %v %s (err %v)", f.Op, short(f.Payload), err)
		}
		return
	}
}

func pub(t testing.TB, ident, channel, payload string) []byte {
	b, err := wire.AppendPublish(nil, []byte(ident), []byte(channel), []byte(payload))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sub(t testing.TB, ident, channel string) []byte {
	b, err := wire.AppendSubscribe(nil, []byte(ident), []byte(channel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func unsub(t testing.TB, ident, channel string) []byte {
	b, err := wire.AppendUnsubscribe(nil, []byte(ident), []byte(channel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var syncSeq atomic.Uint64

// sync round-trips through the broker: once a client has its own ping back
// on the "sync" channel, everything it sent before has been handled.
func (c *rawClient) sync(ident string) {
	c.t.Helper()
	token := fmt.Sprint("ping-", syncSeq.Add(1))
	c.send(sub(c.t, ident, "sync"), pub(c.t, ident, "sync", token))
	for {
		f := c.readFrame()
		if isSync(f) && string(f.Payload) == token {
			return
		}
		if !isSync(f) {
			c.t.Fatalf("while syncing got %v %s", f.Op, short(f.Payload))
		}
	}
}

func testUsers() *brokertest.Users {
	return brokertest.NewUsers(
		auth.User{Ident: "pub", Secret: "pubsecret", PubChans: []string{"chan", "other", "sync"}, SubChans: []string{"sync"}},
		auth.User{Ident: "sub", Secret: "subsecret", SubChans: []string{"chan", "other", "sync"}, PubChans: []string{"sync"}},
		auth.User{Ident: "both", Secret: "bothsecret", PubChans: []string{"chan", "sync"}, SubChans: []string{"chan", "sync"}},
	)
}

func TestInfoOnAccept(t *testing.T) {
	srv := brokertest.Start(t, testUsers(), func(c *broker.Config) { c.Name = "mybroker" })
	nc, err := net.Dial("tcp", srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// One read gets the whole INFO, as the Python client assumes.
	buf := make([]byte, 100)
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := nc.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if n != 5+1+8+4 || !bytes.Equal(buf[:14], []byte("\x00\x00\x00\x12\x01\x08mybroker")) {
		t.Fatalf("INFO = %x", buf[:n])
	}
	// Nonces differ between connections.
	a, b := dial(t, srv.Addr), dial(t, srv.Addr)
	if bytes.Equal(a.nonce, b.nonce) || len(a.nonce) != 4 {
		t.Errorf("nonces %x and %x", a.nonce, b.nonce)
	}
	if a.name != "mybroker" {
		t.Errorf("name %q", a.name)
	}
}

func TestPublishSubscribe(t *testing.T) {
	srv := brokertest.Start(t, testUsers())
	s := login(t, srv.Addr, "sub", "subsecret")
	s.send(sub(t, "sub", "chan"))
	s.sync("sub")
	p := login(t, srv.Addr, "pub", "pubsecret")
	p.send(pub(t, "pub", "chan", "hello"), pub(t, "pub", "other", "not subscribed"), pub(t, "pub", "chan", "world"))
	s.expectMessage("pub", "chan", "hello")
	s.expectMessage("pub", "chan", "world")
	s.expectSilence()
}

// The Python and C clients send AUTH, SUBSCRIBE and PUBLISH back to back,
// often in one segment, before the broker has answered anything.
func TestPipelinedAfterAuth(t *testing.T) {
	users := testUsers()
	srv := brokertest.Start(t, slowStore{users, 100 * time.Millisecond})
	c := dial(t, srv.Addr)
	c.send(c.auth("both", "bothsecret"), sub(t, "both", "chan"),
		pub(t, "both", "chan", "1"), pub(t, "both", "chan", "2"), pub(t, "both", "chan", "3"))
	for _, want := range []string{"1", "2", "3"} {
		c.expectMessage("both", "chan", want)
	}
}

// slowStore delays every lookup, like a remote database.
type slowStore struct {
	auth.Store
	delay time.Duration
}

func (s slowStore) Lookup(ctx context.Context, ident string) (auth.User, bool, error) {
	select {
	case <-time.After(s.delay):
	case <-ctx.Done():
		return auth.User{}, false, ctx.Err()
	}
	return s.Store.Lookup(ctx, ident)
}

// A slow lookup holds only its own connection.
func TestSlowLookupDoesNotBlockOthers(t *testing.T) {
	users := testUsers()
	gate := make(chan struct{})
	store := &gatedStore{Store: users, gated: "pub", gate: gate}
	srv := brokertest.Start(t, store)
	stuck := dial(t, srv.Addr)
	stuck.send(stuck.auth("pub", "pubsecret"))
	s := login(t, srv.Addr, "both", "bothsecret")
	s.sync("both") // served while pub's lookup hangs
	close(gate)
	stuck.sync("pub")
}

type gatedStore struct {
	auth.Store
	gated string
	gate  chan struct{}
}

func (g *gatedStore) Lookup(ctx context.Context, ident string) (auth.User, bool, error) {
	if ident == g.gated {
		<-g.gate
	}
	return g.Store.Lookup(ctx, ident)
}

func TestSelfDeliveryAndFanOut(t *testing.T) {
	srv := brokertest.Start(t, testUsers())
	var subs []*rawClient
	for i := 0; i < 20; i++ {
		s := login(t, srv.Addr, "sub", "subsecret")
		s.send(sub(t, "sub", "chan"))
		s.sync("sub")
		subs = append(subs, s)
	}
	both := login(t, srv.Addr, "both", "bothsecret")
	both.send(sub(t, "both", "chan"))
	both.sync("both")
	for i := 0; i < 50; i++ {
		both.send(pub(t, "both", "chan", fmt.Sprint(i)))
	}
	for _, c := range append(subs, both) {
		for i := 0; i < 50; i++ {
			c.expectMessage("both", "chan", fmt.Sprint(i))
		}
	}
	both.expectSilence()
}

func TestSubscribeIdempotentAndUnsubscribe(t *testing.T) {
	srv := brokertest.Start(t, testUsers())
	s := login(t, srv.Addr, "sub", "subsecret")
	// Unsubscribing from a channel never subscribed is harmless.
	s.send(unsub(t, "sub", "chan"), sub(t, "sub", "chan"), sub(t, "sub", "chan"), sub(t, "whatever", "chan"))
	s.sync("sub")
	p := login(t, srv.Addr, "pub", "pubsecret")
	p.send(pub(t, "pub", "chan", "once"))
	s.expectMessage("pub", "chan", "once") // one copy despite three SUBSCRIBEs
	s.expectSilence()

	s.send(unsub(t, "sub", "chan"))
	s.sync("sub")
	p.send(pub(t, "pub", "chan", "after unsubscribe"))
	p.sync("pub")
	s.expectSilence()
	s.send(unsub(t, "sub", "chan"), sub(t, "sub", "chan"))
	s.sync("sub")
	p.send(pub(t, "pub", "chan", "back"))
	s.expectMessage("pub", "chan", "back")
}

// Every row of the spec's error table: exact text, then the close.
func TestErrorTable(t *testing.T) {
	users := testUsers()
	failing := failingStore{}
	cases := []struct {
		name     string
		store    auth.Store
		frames   func(c *rawClient) [][]byte
		want     string
		ident    string
		category string
	}{
		{"first message not AUTH", users, func(c *rawClient) [][]byte {
			return [][]byte{pub(t, "pub", "chan", "x")}
		}, "First message was not AUTH", "", broker.CategoryInvalidFirstMessage},
		{"first message a large PUBLISH", users, func(c *rawClient) [][]byte {
			return [][]byte{pub(t, "pub", "chan", strings.Repeat("x", 1000))}
		}, "First message was not AUTH", "", broker.CategoryInvalidFirstMessage},
		{"unknown ident", users, func(c *rawClient) [][]byte {
			return [][]byte{c.auth("nobody", "x")}
		}, "Authentication failed for nobody", "", broker.CategoryInvalidIdent},
		{"wrong secret", users, func(c *rawClient) [][]byte {
			return [][]byte{c.auth("pub", "wrong")}
		}, "Authentication failed for pub", "", broker.CategoryInvalidSecret},
		{"hash of the wrong length", users, func(c *rawClient) [][]byte {
			return [][]byte{{0, 0, 0, 13, 2, 3, 'p', 'u', 'b', 1, 2, 3, 4}}
		}, "Authentication failed for pub", "", broker.CategoryInvalidSecret},
		{"store failure", failing, func(c *rawClient) [][]byte {
			return [][]byte{c.auth("pub", "pubsecret")}
		}, "Authentication failed for pub", "", broker.CategoryErrorCheckingIdent},
		{"store timeout", slowStore{users, time.Hour}, func(c *rawClient) [][]byte {
			return [][]byte{c.auth("pub", "pubsecret")}
		}, "Authentication failed for pub", "", broker.CategoryErrorCheckingIdent},
		{"publish ident mismatch", users, func(c *rawClient) [][]byte {
			return [][]byte{c.auth("pub", "pubsecret"), pub(t, "sub", "chan", "x")}
		}, "Invalid authkey in message, ident=sub", "pub", broker.CategoryIdentMismatchPub},
		{"publish not allowed", users, func(c *rawClient) [][]byte {
			return [][]byte{c.auth("sub", "subsecret"), pub(t, "sub", "chan", "x")}
		}, "Authkey not allowed to pub here. ident=sub, chan=chan", "sub", broker.CategoryNoPubPermission},
		{"subscribe not allowed", users, func(c *rawClient) [][]byte {
			return [][]byte{c.auth("pub", "pubsecret"), sub(t, "pub", "chan")}
		}, "Authkey not allowed to sub here. ident=pub, chan=chan", "pub", broker.CategoryNoSubPermission},
		{"subscribe not allowed, other ident in frame", users, func(c *rawClient) [][]byte {
			return [][]byte{c.auth("pub", "pubsecret"), sub(t, "someone", "secret-chan")}
		}, "Authkey not allowed to sub here. ident=pub, chan=secret-chan", "pub", broker.CategoryNoSubPermission},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := brokertest.Start(t, tc.store, func(c *broker.Config) { c.LookupTimeout = 200 * time.Millisecond })
			c := dial(t, srv.Addr)
			c.send(tc.frames(c)...)
			c.expectError(tc.want)
			waitFor(t, "error counted", func() bool { return srv.Broker.ErrorCount(tc.ident, tc.category) == 1 })
		})
	}
}

type failingStore struct{}

func (failingStore) Lookup(context.Context, string) (auth.User, bool, error) {
	return auth.User{}, false, errors.New("connection refused")
}
func (failingStore) String() string { return "failing" }
func (failingStore) Close() error   { return nil }

// A denied SUBSCRIBE is not recorded: nothing is delivered before the close.
func TestDeniedSubscribeNotRecorded(t *testing.T) {
	srv := brokertest.Start(t, testUsers())
	p := login(t, srv.Addr, "pub", "pubsecret")
	p.sync("pub")
	s := dial(t, srv.Addr)
	s.send(s.auth("pub", "pubsecret"), sub(t, "pub", "chan"), pub(t, "pub", "chan", "x"))
	s.expectError("Authkey not allowed to sub here. ident=pub, chan=chan")
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestAuthTimeout(t *testing.T) {
	srv := brokertest.Start(t, testUsers(), func(c *broker.Config) { c.AuthTimeout = 200 * time.Millisecond })
	c := dial(t, srv.Addr)
	c.send([]byte{0, 0, 0}) // half a header, then nothing
	start := time.Now()
	c.expectClosed()
	if time.Since(start) > 5*time.Second {
		t.Fatal("connection not closed by the auth timeout")
	}
	// An authenticated connection is not subject to it.
	s := login(t, srv.Addr, "both", "bothsecret")
	time.Sleep(400 * time.Millisecond)
	s.sync("both")
}

// Each malformed frame closes its own connection and nobody else's.
func TestMalformedFrames(t *testing.T) {
	srv := brokertest.Start(t, testUsers(), func(c *broker.Config) { c.MaxPublishSize = 1000 })
	watcher := login(t, srv.Addr, "both", "bothsecret")
	watcher.send(sub(t, "both", "chan"))
	watcher.sync("both")

	cases := []struct {
		name    string
		preAuth bool
		frame   []byte
	}{
		{"length 0", true, []byte{0, 0, 0, 0, 2}},
		{"length 4", false, []byte{0, 0, 0, 4, 3}},
		{"negative length", false, []byte{0xff, 0xff, 0xff, 0xff, 3}},
		{"length over the pre-auth limit", true, append([]byte{0, 0, 2, 0, 2}, make([]byte, 251)...)},
		{"publish over the limit", false, append([]byte{0, 0, 0x10, 0, 3}, make([]byte, 100)...)},
		{"unknown opcode", false, []byte{0, 0, 0, 5, 6}},
		{"unknown opcode first", true, []byte{0, 0, 0, 5, 0x80}},
		{"empty publish body", false, []byte{0, 0, 0, 5, 3}},
		{"empty auth body", true, []byte{0, 0, 0, 5, 2}},
		{"ident longer than body", false, []byte{0, 0, 0, 8, 3, 9, 'a', 'b'}},
		{"channel longer than body", false, []byte{0, 0, 0, 10, 3, 1, 'a', 200, 'c', 'd'}},
		{"empty subscribe body", false, []byte{0, 0, 0, 5, 4}},
		{"AUTH again", false, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, srv.Addr)
			frame := tc.frame
			if tc.name == "AUTH again" {
				frame = c.auth("both", "bothsecret")
			}
			if !tc.preAuth {
				c.send(c.auth("both", "bothsecret"))
			}
			c.send(frame)
			c.expectClosed()
			// Everyone else is still served.
			watcher.sync("both")
		})
	}
}

func TestEndpointModes(t *testing.T) {
	users := testUsers()
	pubOnly := brokertest.StartEndpoint(t, users, "tcp:interface=127.0.0.1:port=0:mode=publish")
	c := login(t, pubOnly.Addr, "both", "bothsecret")
	c.send(sub(t, "both", "chan"))
	c.expectError("Authkey not allowed to sub here. ident=both, chan=chan")

	subOnly := brokertest.StartEndpoint(t, users, "tcp:interface=127.0.0.1:port=0:mode=subscribe")
	c = login(t, subOnly.Addr, "both", "bothsecret")
	c.send(pub(t, "both", "chan", "x"))
	c.expectError("Authkey not allowed to pub here. ident=both, chan=chan")

	// Two endpoints of one broker share channels: push to one, pull from the other.
	b, err := broker.New(broker.Config{Auth: users})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	addrs := map[broker.Mode]string{}
	for _, spec := range []string{"tcp:interface=127.0.0.1:port=0:mode=publish", "tcp:interface=127.0.0.1:port=0:mode=subscribe"} {
		ep, err := broker.ParseEndpoint(spec)
		if err != nil {
			t.Fatal(err)
		}
		l, err := broker.Listen(context.Background(), ep, nil)
		if err != nil {
			t.Fatal(err)
		}
		addrs[ep.Mode] = l.Addr().String()
		wg.Add(1)
		go func() { defer wg.Done(); b.Serve(l, ep.Mode) }()
	}
	defer func() { b.Shutdown(context.Background()); wg.Wait() }()
	s := login(t, addrs[broker.ModeSubscribe], "both", "bothsecret")
	s.send(sub(t, "both", "chan"))
	p := login(t, addrs[broker.ModePublish], "both", "bothsecret")
	// The SUBSCRIBE has no reply to wait on: publish until one arrives.
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
				p.nc.Write(pub(t, "both", "chan", "pushed"))
			}
		}
	}()
	s.expectMessage("both", "chan", "pushed")
	close(stop)
}

// A subscriber that never reads is closed when it reaches the hard bound;
// the publisher and a healthy subscriber are not slowed.
func TestSlowSubscriberHardBound(t *testing.T) {
	srv := brokertest.Start(t, testUsers(), func(c *broker.Config) {
		c.MaxPublishSize = 64 << 10
		c.SendQueueSoft = 4 << 20
		c.SendQueueHard = 8 << 20
	})
	stalled := login(t, srv.Addr, "sub", "subsecret")
	stalled.send(sub(t, "sub", "chan"))
	stalled.sync("sub")
	healthy := login(t, srv.Addr, "sub", "subsecret")
	healthy.send(sub(t, "sub", "chan"))
	healthy.sync("sub")

	p := login(t, srv.Addr, "pub", "pubsecret")
	payload := strings.Repeat("x", 60<<10)
	const n = 600 // 36 MB: far past the stalled subscriber's socket buffers and hard bound
	var received atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < n; i++ {
			healthy.expectMessage("pub", "chan", payload)
			received.Add(1)
		}
	}()
	frame := pub(t, "pub", "chan", payload)
	for i := 0; i < n; i++ {
		// Stay within 20 frames of the healthy subscriber: it keeps up.
		waitFor(t, "healthy subscriber", func() bool { return int64(i)-received.Load() < 20 })
		p.send(frame)
	}
	<-done
	waitFor(t, "backpressure close", func() bool {
		return srv.Broker.ErrorCount("sub", broker.CategoryDeadlineTimerExpired) == 1
	})
	// The stalled subscriber, reading at last, finds the frames that were
	// already on their way, then the error, then the close.
	got := 0
	for {
		f := stalled.next()
		if f.Op == wire.OpPublish {
			got++
			continue
		}
		if f.Op != wire.OpError || string(f.Payload) != "Backpressure deadline timer expired" {
			t.Fatalf("got %v %s", f.Op, short(f.Payload))
		}
		break
	}
	if got >= n {
		t.Fatalf("stalled subscriber got all %d frames", got)
	}
	stalled.expectClosed()
}

// Past the soft mark the deadline runs; draining cancels it, staying past
// it closes the subscriber.
func TestBackpressureDeadline(t *testing.T) {
	srv := brokertest.Start(t, testUsers(), func(c *broker.Config) {
		c.MaxPublishSize = 64 << 10
		c.SendQueueSoft = 256 << 10
		c.SendQueueLow = 64 << 10
		c.SendQueueHard = 1 << 30
		c.BackpressureDeadline = 300 * time.Millisecond
	})
	s := login(t, srv.Addr, "sub", "subsecret")
	s.send(sub(t, "sub", "chan"))
	s.sync("sub")
	p := login(t, srv.Addr, "pub", "pubsecret")
	frame := pub(t, "pub", "chan", strings.Repeat("y", 60<<10))
	for i := 0; i < 200; i++ { // 12 MB, past any socket buffer
		p.send(frame)
	}
	p.sync("pub")
	waitFor(t, "deadline expiry", func() bool {
		return srv.Broker.ErrorCount("sub", broker.CategoryDeadlineTimerExpired) == 1
	})
	got := 0
	for {
		f := s.next()
		if f.Op == wire.OpPublish {
			got++
			continue
		}
		if f.Op != wire.OpError || string(f.Payload) != "Backpressure deadline timer expired" {
			t.Fatalf("got %v %s", f.Op, short(f.Payload))
		}
		break
	}
	if got >= 200 {
		t.Fatalf("all %d frames delivered despite the deadline", got)
	}
	s.expectClosed()
}

func TestShutdownClosesConnections(t *testing.T) {
	users := testUsers()
	b, err := broker.New(broker.Config{Auth: users})
	if err != nil {
		t.Fatal(err)
	}
	ep, _ := broker.ParseEndpoint("tcp:interface=127.0.0.1:port=0")
	l, err := broker.Listen(context.Background(), ep, nil)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- b.Serve(l, ep.Mode) }()
	c := login(t, l.Addr().String(), "both", "bothsecret")
	c.sync("both")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-served; !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Serve returned %v", err)
	}
	c.expectClosed()
	if _, err := net.Dial("tcp", l.Addr().String()); err == nil {
		t.Error("still accepting after shutdown")
	}
}
