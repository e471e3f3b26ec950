package broker_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
)

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
	a, b := brokertest.Dial(t, srv.Addr), brokertest.Dial(t, srv.Addr)
	if bytes.Equal(a.Nonce, b.Nonce) || len(a.Nonce) != 4 {
		t.Errorf("nonces %x and %x", a.Nonce, b.Nonce)
	}
	if a.Name != "mybroker" {
		t.Errorf("name %q", a.Name)
	}
}

func TestPublishSubscribe(t *testing.T) {
	srv := brokertest.Start(t, testUsers())
	s := brokertest.Login(t, srv.Addr, "sub", "subsecret")
	s.SubscribeSync("sub", "chan")
	p := brokertest.Login(t, srv.Addr, "pub", "pubsecret")
	p.Send(brokertest.Publish(t, "pub", "chan", "hello"), brokertest.Publish(t, "pub", "other", "not subscribed"), brokertest.Publish(t, "pub", "chan", "world"))
	s.ExpectMessage("pub", "chan", "hello")
	s.ExpectMessage("pub", "chan", "world")
	s.ExpectSilence()
}

// The Python and C clients send AUTH, SUBSCRIBE and PUBLISH back to back,
// often in one segment, before the broker has answered anything.
func TestPipelinedAfterAuth(t *testing.T) {
	users := testUsers()
	srv := brokertest.Start(t, slowStore{users, 100 * time.Millisecond})
	c := brokertest.Dial(t, srv.Addr)
	c.Send(c.Auth("both", "bothsecret"), brokertest.Subscribe(t, "both", "chan"),
		brokertest.Publish(t, "both", "chan", "1"), brokertest.Publish(t, "both", "chan", "2"), brokertest.Publish(t, "both", "chan", "3"))
	for _, want := range []string{"1", "2", "3"} {
		c.ExpectMessage("both", "chan", want)
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
	stuck := brokertest.Dial(t, srv.Addr)
	stuck.Send(stuck.Auth("pub", "pubsecret"))
	s := brokertest.Login(t, srv.Addr, "both", "bothsecret")
	s.Sync("both") // served while pub's lookup hangs
	close(gate)
	stuck.Sync("pub")
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
	var subs []*brokertest.Client
	for i := 0; i < 20; i++ {
		s := brokertest.Login(t, srv.Addr, "sub", "subsecret")
		s.SubscribeSync("sub", "chan")
		subs = append(subs, s)
	}
	both := brokertest.Login(t, srv.Addr, "both", "bothsecret")
	both.SubscribeSync("both", "chan")
	for i := 0; i < 50; i++ {
		both.Send(brokertest.Publish(t, "both", "chan", fmt.Sprint(i)))
	}
	for _, c := range append(subs, both) {
		for i := 0; i < 50; i++ {
			c.ExpectMessage("both", "chan", fmt.Sprint(i))
		}
	}
	both.ExpectSilence()
}

func TestSubscribeIdempotentAndUnsubscribe(t *testing.T) {
	srv := brokertest.Start(t, testUsers())
	s := brokertest.Login(t, srv.Addr, "sub", "subsecret")
	// Unsubscribing from a channel never subscribed is harmless.
	s.Send(brokertest.Unsubscribe(t, "sub", "chan"), brokertest.Subscribe(t, "sub", "chan"), brokertest.Subscribe(t, "sub", "chan"), brokertest.Subscribe(t, "whatever", "chan"))
	s.Sync("sub")
	p := brokertest.Login(t, srv.Addr, "pub", "pubsecret")
	p.Send(brokertest.Publish(t, "pub", "chan", "once"))
	s.ExpectMessage("pub", "chan", "once") // one copy despite three SUBSCRIBEs
	s.ExpectSilence()

	s.Send(brokertest.Unsubscribe(t, "sub", "chan"))
	s.Sync("sub")
	p.Send(brokertest.Publish(t, "pub", "chan", "after unsubscribe"))
	p.Sync("pub")
	s.ExpectSilence()
	s.Send(brokertest.Unsubscribe(t, "sub", "chan"), brokertest.Subscribe(t, "sub", "chan"))
	s.Sync("sub")
	p.Send(brokertest.Publish(t, "pub", "chan", "back"))
	s.ExpectMessage("pub", "chan", "back")
}

// Every row of the spec's error table: exact text, then the close.
func TestErrorTable(t *testing.T) {
	users := testUsers()
	failing := failingStore{}
	cases := []struct {
		name     string
		store    auth.Store
		frames   func(c *brokertest.Client) [][]byte
		want     string
		ident    string
		category string
	}{
		{"first message not AUTH", users, func(c *brokertest.Client) [][]byte {
			return [][]byte{brokertest.Publish(t, "pub", "chan", "x")}
		}, "First message was not AUTH", "", broker.CategoryInvalidFirstMessage},
		{"first message a large PUBLISH", users, func(c *brokertest.Client) [][]byte {
			return [][]byte{brokertest.Publish(t, "pub", "chan", strings.Repeat("x", 1000))}
		}, "First message was not AUTH", "", broker.CategoryInvalidFirstMessage},
		{"unknown ident", users, func(c *brokertest.Client) [][]byte {
			return [][]byte{c.Auth("nobody", "x")}
		}, "Authentication failed for nobody", "", broker.CategoryInvalidIdent},
		{"wrong secret", users, func(c *brokertest.Client) [][]byte {
			return [][]byte{c.Auth("pub", "wrong")}
		}, "Authentication failed for pub", "", broker.CategoryInvalidSecret},
		{"hash of the wrong length", users, func(c *brokertest.Client) [][]byte {
			return [][]byte{{0, 0, 0, 13, 2, 3, 'p', 'u', 'b', 1, 2, 3, 4}}
		}, "Authentication failed for pub", "", broker.CategoryInvalidSecret},
		{"store failure", failing, func(c *brokertest.Client) [][]byte {
			return [][]byte{c.Auth("pub", "pubsecret")}
		}, "Authentication failed for pub", "", broker.CategoryErrorCheckingIdent},
		{"store timeout", slowStore{users, time.Hour}, func(c *brokertest.Client) [][]byte {
			return [][]byte{c.Auth("pub", "pubsecret")}
		}, "Authentication failed for pub", "", broker.CategoryErrorCheckingIdent},
		{"publish ident mismatch", users, func(c *brokertest.Client) [][]byte {
			return [][]byte{c.Auth("pub", "pubsecret"), brokertest.Publish(t, "sub", "chan", "x")}
		}, "Invalid authkey in message, ident=sub", "pub", broker.CategoryIdentMismatchPub},
		{"publish not allowed", users, func(c *brokertest.Client) [][]byte {
			return [][]byte{c.Auth("sub", "subsecret"), brokertest.Publish(t, "sub", "chan", "x")}
		}, "Authkey not allowed to pub here. ident=sub, chan=chan", "sub", broker.CategoryNoPubPermission},
		{"subscribe not allowed", users, func(c *brokertest.Client) [][]byte {
			return [][]byte{c.Auth("pub", "pubsecret"), brokertest.Subscribe(t, "pub", "chan")}
		}, "Authkey not allowed to sub here. ident=pub, chan=chan", "pub", broker.CategoryNoSubPermission},
		{"subscribe not allowed, other ident in frame", users, func(c *brokertest.Client) [][]byte {
			return [][]byte{c.Auth("pub", "pubsecret"), brokertest.Subscribe(t, "someone", "secret-chan")}
		}, "Authkey not allowed to sub here. ident=pub, chan=secret-chan", "pub", broker.CategoryNoSubPermission},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := brokertest.Start(t, tc.store, func(c *broker.Config) { c.LookupTimeout = 200 * time.Millisecond })
			c := brokertest.Dial(t, srv.Addr)
			c.Send(tc.frames(c)...)
			c.ExpectError(tc.want)
			brokertest.Eventually(t, "error counted", func() bool {
				return srv.Broker.Snapshot().Errors[broker.ErrorKey{Ident: tc.ident, Category: tc.category}] == 1
			})
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
	p := brokertest.Login(t, srv.Addr, "pub", "pubsecret")
	p.Sync("pub")
	s := brokertest.Dial(t, srv.Addr)
	s.Send(s.Auth("pub", "pubsecret"), brokertest.Subscribe(t, "pub", "chan"), brokertest.Publish(t, "pub", "chan", "x"))
	s.ExpectError("Authkey not allowed to sub here. ident=pub, chan=chan")
}

func TestAuthTimeout(t *testing.T) {
	srv := brokertest.Start(t, testUsers(), func(c *broker.Config) { c.AuthTimeout = 200 * time.Millisecond })
	c := brokertest.Dial(t, srv.Addr)
	c.Send([]byte{0, 0, 0}) // half a header, then nothing
	start := time.Now()
	c.ExpectClosed()
	if time.Since(start) > 5*time.Second {
		t.Fatal("connection not closed by the auth timeout")
	}
	// An authenticated connection is not subject to it.
	s := brokertest.Login(t, srv.Addr, "both", "bothsecret")
	time.Sleep(400 * time.Millisecond)
	s.Sync("both")
}

// Each malformed frame closes its own connection and nobody else's.
func TestMalformedFrames(t *testing.T) {
	srv := brokertest.Start(t, testUsers(), func(c *broker.Config) { c.MaxPublishSize = 1000 })
	watcher := brokertest.Login(t, srv.Addr, "both", "bothsecret")
	watcher.SubscribeSync("both", "chan")

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
			c := brokertest.Dial(t, srv.Addr)
			frame := tc.frame
			if tc.name == "AUTH again" {
				frame = c.Auth("both", "bothsecret")
			}
			if !tc.preAuth {
				c.Send(c.Auth("both", "bothsecret"))
			}
			c.Send(frame)
			c.ExpectClosed()
			// Everyone else is still served.
			watcher.Sync("both")
		})
	}
}

func TestEndpointModes(t *testing.T) {
	users := testUsers()
	pubOnly := brokertest.StartEndpoint(t, users, "tcp:interface=127.0.0.1:port=0:mode=publish")
	c := brokertest.Login(t, pubOnly.Addr, "both", "bothsecret")
	c.Send(brokertest.Subscribe(t, "both", "chan"))
	c.ExpectError("Authkey not allowed to sub here. ident=both, chan=chan")

	subOnly := brokertest.StartEndpoint(t, users, "tcp:interface=127.0.0.1:port=0:mode=subscribe")
	c = brokertest.Login(t, subOnly.Addr, "both", "bothsecret")
	c.Send(brokertest.Publish(t, "both", "chan", "x"))
	c.ExpectError("Authkey not allowed to pub here. ident=both, chan=chan")

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
	s := brokertest.Login(t, addrs[broker.ModeSubscribe], "both", "bothsecret")
	s.Send(brokertest.Subscribe(t, "both", "chan"))
	p := brokertest.Login(t, addrs[broker.ModePublish], "both", "bothsecret")
	// The SUBSCRIBE has no reply to wait on: publish until one arrives.
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
				p.Conn.Write(brokertest.Publish(t, "both", "chan", "pushed"))
			}
		}
	}()
	s.ExpectMessage("both", "chan", "pushed")
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
	stalled := brokertest.Login(t, srv.Addr, "sub", "subsecret")
	stalled.SubscribeSync("sub", "chan")
	healthy := brokertest.Login(t, srv.Addr, "sub", "subsecret")
	healthy.SubscribeSync("sub", "chan")

	p := brokertest.Login(t, srv.Addr, "pub", "pubsecret")
	payload := strings.Repeat("x", 60<<10)
	const n = 600 // 36 MB: far past the stalled subscriber's socket buffers and hard bound
	var received atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < n; i++ {
			healthy.ExpectMessage("pub", "chan", payload)
			received.Add(1)
		}
	}()
	frame := brokertest.Publish(t, "pub", "chan", payload)
	for i := 0; i < n; i++ {
		// Stay within 20 frames of the healthy subscriber: it keeps up.
		brokertest.Eventually(t, "healthy subscriber", func() bool { return int64(i)-received.Load() < 20 })
		p.Send(frame)
	}
	<-done
	brokertest.Eventually(t, "backpressure close", func() bool {
		return srv.Broker.Snapshot().Errors[broker.ErrorKey{Ident: "sub", Category: broker.CategoryDeadlineTimerExpired}] == 1
	})
	// The stalled subscriber, reading at last, finds the frames that were
	// already on their way, then the error, then the close.
	if got := stalled.ExpectError("Backpressure deadline timer expired"); got >= n {
		t.Fatalf("stalled subscriber got all %d frames", got)
	}
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
	s := brokertest.Login(t, srv.Addr, "sub", "subsecret")
	s.SubscribeSync("sub", "chan")
	p := brokertest.Login(t, srv.Addr, "pub", "pubsecret")
	frame := brokertest.Publish(t, "pub", "chan", strings.Repeat("y", 60<<10))
	for i := 0; i < 200; i++ { // 12 MB, past any socket buffer
		p.Send(frame)
	}
	p.Sync("pub")
	brokertest.Eventually(t, "deadline expiry", func() bool {
		return srv.Broker.Snapshot().Errors[broker.ErrorKey{Ident: "sub", Category: broker.CategoryDeadlineTimerExpired}] == 1
	})
	if got := s.ExpectError("Backpressure deadline timer expired"); got >= 200 {
		t.Fatalf("all %d frames delivered despite the deadline", got)
	}
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
	c := brokertest.Login(t, l.Addr().String(), "both", "bothsecret")
	c.Sync("both")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-served; !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Serve returned %v", err)
	}
	c.ExpectClosed()
	if _, err := net.Dial("tcp", l.Addr().String()); err == nil {
		t.Error("still accepting after shutdown")
	}
}
