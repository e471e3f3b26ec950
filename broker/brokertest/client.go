package brokertest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/wire"
)

// Client speaks the wire protocol by hand, so a test controls every byte,
// as nats-server's test/test.go does for its protocol. Reads and writes
// fail the test after 10 s.
type Client struct {
	T     testing.TB
	Conn  net.Conn
	R     *wire.Reader
	Name  string // the broker's name, from INFO
	Nonce []byte // from INFO
}

// Dial connects to addr and reads INFO; the connection is closed when the
// test ends.
func Dial(t testing.TB, addr string) *Client {
	t.Helper()
	return DialWith(t, addr, &net.Dialer{Timeout: 5 * time.Second})
}

// DialWith is Dial through d (a source address, say).
func DialWith(t testing.TB, addr string, d *net.Dialer) *Client {
	t.Helper()
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return Handshake(t, nc)
}

// Handshake reads INFO on a connection the test opened itself (TLS, say).
func Handshake(t testing.TB, nc net.Conn) *Client {
	t.Helper()
	c := &Client{T: t, Conn: nc, R: wire.NewReader(nc, wire.UniformLimits(64<<20))}
	f := c.ReadFrame()
	if f.Op != wire.OpInfo {
		t.Fatalf("first frame is %v %s, want INFO", f.Op, Short(f.Payload))
	}
	c.Name = string(f.Ident)
	c.Nonce = append([]byte(nil), f.Payload...)
	return c
}

// Login dials and sends AUTH. hpfeeds has no success answer: use Sync to
// know the broker accepted it.
func Login(t testing.TB, addr, ident, secret string) *Client {
	t.Helper()
	c := Dial(t, addr)
	c.Send(c.Auth(ident, secret))
	return c
}

// Auth is the AUTH frame answering this connection's nonce.
func (c *Client) Auth(ident, secret string) []byte {
	c.T.Helper()
	return built(c.T)(wire.AppendAuth(nil, c.Nonce, ident, secret))
}

// Send writes frames in one write.
func (c *Client) Send(frames ...[]byte) {
	c.T.Helper()
	c.Conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Conn.Write(bytes.Join(frames, nil)); err != nil {
		c.T.Fatalf("write: %v", err)
	}
}

// ReadFrame returns the next frame, whatever it is.
func (c *Client) ReadFrame() wire.Frame {
	c.T.Helper()
	c.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	f, err := c.R.Next()
	if err != nil {
		c.T.Fatalf("reading a frame: %v", err)
	}
	return f
}

// Next returns the next frame, passing over Sync's pings.
func (c *Client) Next() wire.Frame {
	c.T.Helper()
	for {
		if f := c.ReadFrame(); !IsSync(f) {
			return f
		}
	}
}

// ExpectMessage reads one PUBLISH and checks it.
func (c *Client) ExpectMessage(ident, channel, payload string) {
	c.T.Helper()
	f := c.Next()
	if f.Op != wire.OpPublish || string(f.Ident) != ident || string(f.Channel) != channel || string(f.Payload) != payload {
		c.T.Fatalf("got %v ident=%q chan=%q payload=%s; want PUBLISH %q %q %s",
			f.Op, f.Ident, f.Channel, Short(f.Payload), ident, channel, Short([]byte(payload)))
	}
}

// ExpectError reads an ERROR with text want, passing over deliveries
// queued before it, then the end of the stream. It returns how many
// deliveries it passed over.
func (c *Client) ExpectError(want string) (delivered int) {
	c.T.Helper()
	f := c.Next()
	for ; f.Op == wire.OpPublish; delivered++ {
		f = c.Next()
	}
	if f.Op != wire.OpError || string(f.Payload) != want {
		c.T.Fatalf("got %v %q, want ERROR %q", f.Op, f.Payload, want)
	}
	c.ExpectClosed()
	return delivered
}

// ExpectClosed reads until the broker closes the connection, passing over
// deliveries queued before the close.
func (c *Client) ExpectClosed() {
	c.T.Helper()
	c.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := c.R.Next()
		if err == nil {
			if f.Op == wire.OpPublish {
				continue
			}
			c.T.Fatalf("got %v %s, want the connection closed", f.Op, Short(f.Payload))
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || IsReset(err) {
			return
		}
		c.T.Fatalf("want the connection closed, got %v", err)
	}
}

// IsReset reports whether err is a connection reset by the peer.
func IsReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}

// ExpectSilence checks that nothing but Sync's pings arrives for a short
// while.
func (c *Client) ExpectSilence() {
	c.T.Helper()
	c.Conn.SetReadDeadline(time.Now().Add(150 * time.Millisecond))
	for {
		f, err := c.R.Next()
		if err == nil && IsSync(f) {
			continue
		}
		var ne net.Error
		if err == nil || !errors.As(err, &ne) || !ne.Timeout() {
			c.T.Fatalf("expected nothing, got %v %s (err %v)", f.Op, Short(f.Payload), err)
		}
		return
	}
}

// SyncChannel is the channel Sync pings on; ident must be allowed to
// publish and subscribe to it.
const SyncChannel = "sync"

var syncSeq atomic.Uint64

// Sync round-trips through the broker instead of sleeping: once the client
// has its own ping back on SyncChannel, everything it sent before has been
// handled.
func (c *Client) Sync(ident string) {
	c.T.Helper()
	token := fmt.Sprint("ping-", syncSeq.Add(1))
	c.Send(Subscribe(c.T, ident, SyncChannel), Publish(c.T, ident, SyncChannel, token))
	for {
		f := c.ReadFrame()
		if IsSync(f) && string(f.Payload) == token {
			return
		}
		if !IsSync(f) {
			c.T.Fatalf("while syncing got %v %s", f.Op, Short(f.Payload))
		}
	}
}

// SubscribeSync subscribes to channels and waits, with Sync, until the
// broker has handled that.
func (c *Client) SubscribeSync(ident string, channels ...string) {
	c.T.Helper()
	var b []byte
	for _, ch := range channels {
		b = append(b, Subscribe(c.T, ident, ch)...)
	}
	c.Send(b)
	c.Sync(ident)
}

// SubscribeOwn subscribes to channels and to the ident's own channel (a
// channel named as the ident, which it must be allowed to publish and
// subscribe to), then publishes a token there and reads until it is back:
// the broker has handled the SUBSCRIBE frames. Unlike Sync it passes over
// other deliveries, and nobody else hears its token, which suits clusters.
func (c *Client) SubscribeOwn(ident string, channels ...string) {
	c.T.Helper()
	var b []byte
	// Not append(channels, ident): that can write into the caller's array,
	// which a user's channel list in the store may share (a data race).
	for _, ch := range slices.Concat(channels, []string{ident}) {
		b = append(b, Subscribe(c.T, ident, ch)...)
	}
	token := fmt.Sprint("own-", syncSeq.Add(1))
	c.Send(b, Publish(c.T, ident, ident, token))
	for {
		f := c.ReadFrame()
		if f.Op == wire.OpError {
			c.T.Fatalf("%s: broker error %q", ident, f.Payload)
		}
		if string(f.Channel) == ident && string(f.Payload) == token {
			return
		}
	}
}

// IsSync reports whether f is a ping of Sync.
func IsSync(f wire.Frame) bool { return f.Op == wire.OpPublish && string(f.Channel) == SyncChannel }

// Short shows a payload in a failure message, cut to 40 bytes.
func Short(b []byte) string {
	if len(b) > 40 {
		return fmt.Sprintf("%q… (%d bytes)", b[:40], len(b))
	}
	return fmt.Sprintf("%q", b)
}

// Publish is a PUBLISH frame.
func Publish(t testing.TB, ident, channel, payload string) []byte {
	t.Helper()
	return built(t)(wire.AppendPublish(nil, []byte(ident), []byte(channel), []byte(payload)))
}

// Subscribe is a SUBSCRIBE frame.
func Subscribe(t testing.TB, ident, channel string) []byte {
	t.Helper()
	return built(t)(wire.AppendSubscribe(nil, []byte(ident), []byte(channel)))
}

// Unsubscribe is an UNSUBSCRIBE frame.
func Unsubscribe(t testing.TB, ident, channel string) []byte {
	t.Helper()
	return built(t)(wire.AppendUnsubscribe(nil, []byte(ident), []byte(channel)))
}

// built fails the test if a frame could not be built (a field too long).
func built(t testing.TB) func([]byte, error) []byte {
	return func(b []byte, err error) []byte {
		if err != nil {
			t.Helper()
			t.Fatal(err)
		}
		return b
	}
}

// Eventually checks cond every 10 ms until it holds (true, or a nil error),
// failing the test after 30 s with what and the last error.
func Eventually[C func() bool | func() error](t testing.TB, what string, cond C) {
	t.Helper()
	var check func() error
	switch f := any(cond).(type) {
	case func() bool:
		check = func() error {
			if !f() {
				return errors.New("the condition is false")
			}
			return nil
		}
	case func() error:
		check = f
	}
	deadline := time.Now().Add(30 * time.Second)
	for err := check(); err != nil; err = check() {
		if time.Now().After(deadline) {
			t.Fatalf("still not %s after 30 s: %v", what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
