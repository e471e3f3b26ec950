package client_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
	"github.com/hpfeeds-go/hpfeeds/client"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

var users = brokertest.NewUsers(
	auth.User{Ident: "sensor", Secret: "s3cret", PubChans: []string{"events"}, SubChans: []string{"events"}},
	auth.User{Ident: "reader", Secret: "r", SubChans: []string{"events"}},
)

// exampleAddr is a broker the examples talk to.
var exampleAddr string

func TestMain(m *testing.M) {
	b, err := broker.New(broker.Config{Auth: users})
	if err != nil {
		panic(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go b.Serve(l, broker.ModePubSub)
	exampleAddr = l.Addr().String()
	code := m.Run()
	b.Shutdown(context.Background())
	os.Exit(code)
}

func Example() {
	ctx := context.Background()
	c, err := client.Dial(ctx, client.Config{Addr: exampleAddr, Ident: "sensor", Secret: "s3cret"})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	c.Subscribe("events")
	time.Sleep(50 * time.Millisecond) // hpfeeds does not acknowledge SUBSCRIBE
	c.Publish("events", []byte(`{"src_ip": "192.0.2.1"}`))
	m := <-c.Messages()
	fmt.Printf("%s on %s: %s\n", m.Ident, m.Channel, m.Payload)
	// Output: sensor on events: {"src_ip": "192.0.2.1"}
}

func ExampleBrokerError() {
	c, err := client.Dial(context.Background(), client.Config{Addr: exampleAddr, Ident: "sensor", Secret: "wrong"})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	err = <-c.Errors()
	var be *client.BrokerError
	if errors.As(err, &be) && be.AuthFailed() {
		fmt.Println(be.Text)
	}
	// Output: Authentication failed for sensor
}

func recv(t *testing.T, c *client.Client) client.Message {
	t.Helper()
	select {
	case m := <-c.Messages():
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no message")
	}
	return client.Message{}
}

// subscribed publishes probes until sub sees one: SUBSCRIBE has no reply.
func subscribed(t *testing.T, pub, sub *client.Client) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		pub.Publish("events", []byte("probe"))
		select {
		case <-sub.Messages():
			// Drain the other probes in flight.
			for {
				select {
				case <-sub.Messages():
				case <-time.After(100 * time.Millisecond):
					return
				}
			}
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatal("subscription never took effect")
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func serveOn(t *testing.T, addr string) *broker.Broker {
	b, err := broker.New(broker.Config{Auth: users})
	if err != nil {
		t.Fatal(err)
	}
	var l net.Listener
	for i := 0; i < 50; i++ {
		if l, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	go b.Serve(l, broker.ModePubSub)
	return b
}

func TestReconnectResubscribes(t *testing.T) {
	addr := freePort(t)
	b := serveOn(t, addr)
	cfg := client.Config{Addr: addr, Ident: "sensor", Secret: "s3cret", MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}
	sub, err := client.Dial(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	sub.Subscribe("events")
	pub, err := client.Dial(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	subscribed(t, pub, sub)

	b.Shutdown(context.Background())
	b2 := serveOn(t, addr)
	defer b2.Shutdown(context.Background())
	// sub never calls Subscribe again: the client restores it.
	subscribed(t, pub, sub)
}

func TestPublishesQueuedWhileDisconnected(t *testing.T) {
	addr := freePort(t)
	b := serveOn(t, addr)
	pub, err := client.Dial(context.Background(), client.Config{Addr: addr, Ident: "sensor", Secret: "s3cret",
		MinBackoff: time.Second, MaxBackoff: time.Second, QueueSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	b.Shutdown(context.Background())
	<-pub.Errors() // the client has seen the connection go
	for _, p := range []string{"one", "two"} {
		if err := pub.Publish("events", []byte(p)); err != nil {
			t.Fatal(err)
		}
	}
	if err := pub.Publish("events", []byte("three")); !errors.Is(err, client.ErrQueueFull) {
		t.Fatalf("third publish: %v, want ErrQueueFull", err)
	}
	b2 := serveOn(t, addr)
	defer b2.Shutdown(context.Background())
	// Subscribe before pub's next attempt, at least half a second away.
	sub, err := client.Dial(context.Background(), client.Config{Addr: addr, Ident: "reader", Secret: "r"})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	sub.Subscribe("events")
	for _, want := range []string{"one", "two"} {
		if m := recv(t, sub); string(m.Payload) != want {
			t.Fatalf("got %q, want %q", m.Payload, want)
		}
	}
}

func TestDisconnectedPublishError(t *testing.T) {
	addr := freePort(t)
	b := serveOn(t, addr)
	c, err := client.Dial(context.Background(), client.Config{Addr: addr, Ident: "sensor", Secret: "s3cret", MinBackoff: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b.Shutdown(context.Background())
	<-c.Errors()
	if err := c.Publish("events", []byte("x")); !errors.Is(err, client.ErrDisconnected) {
		t.Fatalf("got %v, want ErrDisconnected", err)
	}
}

// A wrong secret is retried with growing waits, never in a hot loop.
func TestBadSecretBacksOff(t *testing.T) {
	srv := brokertest.Start(t, users)
	c, err := client.Dial(context.Background(), client.Config{Addr: srv.Addr, Ident: "sensor", Secret: "wrong", MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	c.Close()
	// 50+100+200+400+800 ms of (jittered, at least halved) waits fit in
	// 1.5 s at most about 7 times; a hot loop would be thousands.
	n := srv.Broker.Snapshot().Errors[broker.ErrorKey{Ident: "", Category: broker.CategoryInvalidSecret}]
	if n < 2 || n > 8 {
		t.Fatalf("%d attempts in 1.5 s", n)
	}
}

func TestPermissionErrorsAreTyped(t *testing.T) {
	srv := brokertest.Start(t, users)
	c, err := client.Dial(context.Background(), client.Config{Addr: srv.Addr, Ident: "reader", Secret: "r", MinBackoff: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Publish("events", []byte("not allowed"))
	var be *client.BrokerError
	if err := <-c.Errors(); !errors.As(err, &be) || !be.PermissionDenied() || be.Text != "Authkey not allowed to pub here. ident=reader, chan=events" {
		t.Fatalf("got %v", err)
	}
}

func TestTLS(t *testing.T) {
	ca, certFile, keyFile := testCerts(t)
	srv := brokertest.StartEndpoint(t, users, "tls:interface=127.0.0.1:port=0:cert="+certFile+":key="+keyFile)
	c, err := client.Dial(context.Background(), client.Config{Addr: srv.Addr, Ident: "sensor", Secret: "s3cret",
		TLS: &tls.Config{RootCAs: ca, ServerName: "localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Subscribe("events")
	subscribed(t, c, c)
	if c.BrokerName() != "hpfeeds" {
		t.Errorf("broker name %q", c.BrokerName())
	}
	// An untrusted certificate fails the first connection.
	if _, err := client.Dial(context.Background(), client.Config{Addr: srv.Addr, Ident: "sensor", Secret: "s3cret", TLS: &tls.Config{ServerName: "localhost"}}); err == nil {
		t.Fatal("untrusted certificate accepted")
	}
}

// stalledBroker accepts one client, sends INFO, then never reads again, so
// the client's writes block once the socket buffers are full.
func stalledBroker(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		nc, err := l.Accept()
		if err != nil {
			return
		}
		t.Cleanup(func() { nc.Close() })
		info, _ := wire.AppendInfo(nil, "stalled", [wire.NonceLen]byte{})
		nc.Write(info)
	}()
	return l.Addr().String()
}

// Close returns while a Publish is blocked writing to a broker that stopped
// reading: it used to wait forever for the lock the blocked write held.
func TestCloseWhilePublishBlocked(t *testing.T) {
	c, err := client.Dial(context.Background(), client.Config{Addr: stalledBroker(t), Ident: "sensor", Secret: "s"})
	if err != nil {
		t.Fatal(err)
	}
	var sent atomic.Int64
	published := make(chan error, 1)
	go func() {
		payload := make([]byte, 1<<20)
		for {
			if err := c.Publish("events", payload); err != nil {
				published <- err
				return
			}
			sent.Add(1)
		}
	}()
	// Blocked: nothing sent for a while after the socket buffers filled.
	for last := int64(-1); ; {
		time.Sleep(300 * time.Millisecond)
		n := sent.Load()
		if n == last && n > 0 {
			break
		}
		last = n
	}
	closed := make(chan struct{})
	go func() {
		c.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close still blocked after 10 s behind a Publish to a broker that stopped reading")
	}
	select {
	case err := <-published:
		if !errors.Is(err, client.ErrClosed) {
			t.Errorf("the blocked Publish returned %v, want ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("the blocked Publish did not return after Close")
	}
}

// Drain learns the outcome of what was sent without guessing a delay: nil
// once the broker read it all, over TCP and TLS, or the broker's refusal;
// nothing is sent after it.
func TestDrain(t *testing.T) {
	ca, certFile, keyFile := testCerts(t)
	plain := brokertest.Start(t, users)
	tlsSrv := brokertest.StartEndpoint(t, users, "tls:interface=127.0.0.1:port=0:cert="+certFile+":key="+keyFile)
	for _, tc := range []struct {
		name, addr, ident, secret string
		tls                       *tls.Config
		refused                   bool
	}{
		{"tcp", plain.Addr, "sensor", "s3cret", nil, false},
		{"tls", tlsSrv.Addr, "sensor", "s3cret", &tls.Config{RootCAs: ca, ServerName: "localhost"}, false},
		{"refused", plain.Addr, "reader", "r", nil, true},
	} {
		c, err := client.Dial(context.Background(), client.Config{Addr: tc.addr, Ident: tc.ident, Secret: tc.secret, TLS: tc.tls, MinBackoff: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		for range 100 {
			c.Publish("events", []byte("x"))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = c.Drain(ctx)
		cancel()
		var be *client.BrokerError
		if tc.refused && errors.Is(err, client.ErrDisconnected) {
			err = <-c.Errors() // the refusal came before Drain
		}
		if tc.refused != errors.As(err, &be) || tc.refused && !be.PermissionDenied() || !tc.refused && err != nil {
			t.Errorf("%s: Drain: %v", tc.name, err)
		}
		if err := c.Publish("events", []byte("late")); !errors.Is(err, client.ErrClosed) && !errors.Is(err, client.ErrDisconnected) {
			t.Errorf("%s: Publish after Drain: %v", tc.name, err)
		}
		c.Close()
	}
}
