// Package client is an hpfeeds client: it connects to a broker over TCP or
// TLS, authenticates, subscribes and publishes, and reconnects on its own
// with exponential backoff and jitter, restoring its subscriptions.
package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/hpfeeds-go/hpfeeds/wire"
)

// Config says where to connect and how to behave when the connection drops.
type Config struct {
	Addr          string // host:port
	Ident, Secret string
	// TLS, if set, wraps the connection; set RootCAs for a private CA and
	// ServerName when Addr is not the certificate's name.
	TLS *tls.Config
	// MinBackoff and MaxBackoff bound the wait between reconnection
	// attempts (defaults 500 ms and 30 s); each wait is jittered.
	MinBackoff, MaxBackoff time.Duration
	// QueueSize is how many publishes are kept while disconnected and sent
	// on reconnection. Zero makes Publish return ErrDisconnected instead.
	QueueSize int
	// MessageBuffer is the capacity of the Messages channel (default 1024).
	// When it is full the client stops reading, and the broker's
	// backpressure applies.
	MessageBuffer int
	// InfoTimeout, if set, bounds the wait for the broker's INFO once the
	// connection is made (otherwise the context's deadline, or 10 s). A
	// broker sends INFO at once; a TLS endpoint reached without TLS sends
	// nothing, so a short bound reports that mistake sooner.
	InfoTimeout time.Duration
	Logger      *slog.Logger
}

// Message is one PUBLISH received from the broker.
type Message struct {
	Ident, Channel string
	Payload        []byte
}

// BrokerError is an ERROR frame from the broker; the broker closes the
// connection after sending one.
type BrokerError struct{ Text string }

func (e *BrokerError) Error() string { return "hpfeeds broker: " + e.Text }

// AuthFailed reports whether the broker refused the ident or secret.
func (e *BrokerError) AuthFailed() bool { return strings.HasPrefix(e.Text, wire.ErrAuthFailedPrefix) }

// PermissionDenied reports whether a PUBLISH or SUBSCRIBE was refused.
func (e *BrokerError) PermissionDenied() bool { return wire.IsPermissionError(e.Text) }

// Backpressure reports whether the broker dropped this client for reading
// too slowly.
func (e *BrokerError) Backpressure() bool { return e.Text == wire.ErrBackpressure }

var (
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("hpfeeds client: closed")
	// ErrDisconnected is returned by Publish while disconnected when
	// QueueSize is zero.
	ErrDisconnected = errors.New("hpfeeds client: not connected")
	// ErrQueueFull is returned by Publish while disconnected when the
	// queue of QueueSize publishes is full.
	ErrQueueFull = errors.New("hpfeeds client: disconnected and the publish queue is full")
)

// Client is a connection to a broker that survives disconnections. It is
// safe for concurrent use.
type Client struct {
	cfg      Config
	messages chan Message
	errs     chan error
	ctx      context.Context
	cancel   context.CancelFunc
	done     chan struct{}

	// wmu serialises writes to the connection and is never held by Close
	// or the reader, so a broker that stops reading can block a Publish
	// but not Close: closing the connection ends the blocked write.
	wmu sync.Mutex

	mu     sync.Mutex // guards what follows; never held during I/O
	nc     net.Conn   // nil while disconnected
	drain  chan error // set by Drain: run hands it the connection's end
	subs   map[string]bool
	queue  [][]byte
	broker string
}

// Dial connects and authenticates, then keeps the connection up until
// Close. It fails if the first connection cannot be made; later failures
// are retried in the background and reported on Errors.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 500 * time.Millisecond
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(30*time.Second, cfg.MinBackoff)
	}
	if cfg.MessageBuffer <= 0 {
		cfg.MessageBuffer = 1024
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	c := &Client{
		cfg:      cfg,
		messages: make(chan Message, cfg.MessageBuffer),
		errs:     make(chan error, 16),
		done:     make(chan struct{}),
		subs:     map[string]bool{},
	}
	nc, rd, err := c.connect(ctx)
	if err != nil {
		return nil, err
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.nc = nc
	go c.run(nc, rd)
	return c, nil
}

// connect dials, reads INFO and sends AUTH. There is no success answer in
// hpfeeds: a refusal arrives later as an ERROR.
func (c *Client) connect(ctx context.Context) (net.Conn, *wire.Reader, error) {
	d := net.Dialer{Timeout: 10 * time.Second, KeepAlive: 15 * time.Second}
	var nc net.Conn
	var err error
	if c.cfg.TLS != nil {
		td := tls.Dialer{NetDialer: &d, Config: c.cfg.TLS}
		nc, err = td.DialContext(ctx, "tcp", c.cfg.Addr)
	} else {
		nc, err = d.DialContext(ctx, "tcp", c.cfg.Addr)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("connecting to %s: %w", c.cfg.Addr, err)
	}
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(10 * time.Second)
	}
	if t := c.cfg.InfoTimeout; t > 0 && time.Now().Add(t).Before(dl) {
		dl = time.Now().Add(t)
	}
	nc.SetDeadline(dl)
	rd := wire.NewReader(nc, wire.UniformLimits(wire.MaxFrameLen))
	info, err := rd.Next()
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("reading the broker's INFO from %s: %w", c.cfg.Addr, err)
	}
	if info.Op == wire.OpError {
		nc.Close()
		return nil, nil, &BrokerError{Text: string(info.Payload)}
	}
	if info.Op != wire.OpInfo {
		nc.Close()
		return nil, nil, fmt.Errorf("%s is not an hpfeeds broker: first frame is %v", c.cfg.Addr, info.Op)
	}
	c.mu.Lock()
	c.broker = string(info.Ident)
	c.mu.Unlock()
	frame, err := wire.AppendAuth(nil, info.Payload, c.cfg.Ident, c.cfg.Secret)
	if err == nil {
		_, err = nc.Write(frame)
	}
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("authenticating to %s: %w", c.cfg.Addr, err)
	}
	nc.SetDeadline(time.Time{})
	return nc, rd, nil
}

// BrokerName is the name the broker sent in its last INFO.
func (c *Client) BrokerName() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.broker
}

// Messages delivers what subscribed channels receive; it is closed by Close.
func (c *Client) Messages() <-chan Message { return c.messages }

// Errors reports broker errors (*BrokerError) and lost connections. When
// nobody reads it, errors beyond its small buffer are dropped.
func (c *Client) Errors() <-chan error { return c.errs }

func (c *Client) report(err error) {
	select {
	case c.errs <- err:
	default:
	}
}

// run reads the connection and reconnects when it drops.
func (c *Client) run(nc net.Conn, rd *wire.Reader) {
	defer close(c.done)
	defer close(c.messages)
	backoff := c.cfg.MinBackoff
	for {
		start := time.Now()
		err := c.read(rd)
		c.mu.Lock()
		c.nc = nil
		drain := c.drain
		c.mu.Unlock()
		nc.Close()
		if drain != nil {
			drain <- err
			return
		}
		if c.ctx.Err() != nil {
			return
		}
		c.report(err)
		// A connection that lasted resets the backoff; one refused at
		// once (a wrong secret) keeps growing it: never a hot loop.
		if time.Since(start) > 10*time.Second {
			backoff = c.cfg.MinBackoff
		}
		for {
			wait := backoff/2 + rand.N(backoff/2+1)
			backoff = min(2*backoff, c.cfg.MaxBackoff)
			select {
			case <-c.ctx.Done():
				return
			case <-time.After(wait):
			}
			ctx, cancel := context.WithTimeout(c.ctx, 10*time.Second)
			nc, rd, err = c.connect(ctx)
			cancel()
			if err == nil {
				break
			}
			if c.ctx.Err() != nil {
				return
			}
			c.report(err)
		}
		if err := c.resume(nc); err != nil {
			c.report(err)
		}
	}
}

// resume restores subscriptions and sends queued publishes, ahead of any
// new send.
func (c *Client) resume(nc net.Conn) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	if c.ctx.Err() != nil { // Close ran before nc was visible to it
		c.mu.Unlock()
		nc.Close()
		return ErrClosed
	}
	var buf []byte
	for ch := range c.subs {
		buf, _ = wire.AppendSubscribe(buf, []byte(c.cfg.Ident), []byte(ch))
	}
	for _, f := range c.queue {
		buf = append(buf, f...)
	}
	c.queue = nil
	c.nc = nc
	c.mu.Unlock()
	if len(buf) == 0 {
		return nil
	}
	_, err := nc.Write(buf)
	return err
}

func (c *Client) read(rd *wire.Reader) error {
	for {
		f, err := rd.Next()
		if err != nil {
			return fmt.Errorf("connection to %s lost: %w", c.cfg.Addr, err)
		}
		switch f.Op {
		case wire.OpPublish:
			m := Message{Ident: string(f.Ident), Channel: string(f.Channel), Payload: append([]byte(nil), f.Payload...)}
			select {
			case c.messages <- m:
			case <-c.ctx.Done():
				return ErrClosed
			}
		case wire.OpError:
			return &BrokerError{Text: string(f.Payload)}
		}
	}
}

// send writes a frame, or queues it while disconnected if queue is set.
func (c *Client) send(frame []byte, queue bool) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	nc, draining := c.nc, c.drain != nil
	c.mu.Unlock()
	if c.ctx.Err() != nil || draining {
		return ErrClosed
	}
	if nc != nil {
		if _, err := nc.Write(frame); err == nil {
			return nil
		}
		// The reader notices the broken connection and reconnects.
	}
	if c.ctx.Err() != nil {
		return ErrClosed
	}
	if !queue {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cfg.QueueSize == 0 {
		return ErrDisconnected
	}
	if len(c.queue) >= c.cfg.QueueSize {
		return ErrQueueFull
	}
	c.queue = append(c.queue, frame)
	return nil
}

// Subscribe subscribes to channels, now and after every reconnection.
func (c *Client) Subscribe(channels ...string) error {
	return c.follow(true, channels)
}

// Unsubscribe stops receiving channels.
func (c *Client) Unsubscribe(channels ...string) error {
	return c.follow(false, channels)
}

// follow subscribes to or unsubscribes from channels, remembering which
// are to be restored after a reconnection.
func (c *Client) follow(subscribe bool, channels []string) error {
	appendFrame := wire.AppendUnsubscribe
	if subscribe {
		appendFrame = wire.AppendSubscribe
	}
	for _, ch := range channels {
		frame, err := appendFrame(nil, []byte(c.cfg.Ident), []byte(ch))
		if err != nil {
			return err
		}
		c.mu.Lock()
		if subscribe {
			c.subs[ch] = true
		} else {
			delete(c.subs, ch)
		}
		c.mu.Unlock()
		if err := c.send(frame, false); err != nil {
			return err
		}
	}
	return nil
}

// Publish sends payload to channel. While disconnected it queues the
// message (Config.QueueSize) or returns ErrDisconnected.
func (c *Client) Publish(channel string, payload []byte) error {
	frame, err := wire.AppendPublish(nil, []byte(c.cfg.Ident), []byte(channel), payload)
	if err != nil {
		return err
	}
	return c.send(frame, true)
}

// Drain stops sending and waits until the broker has read everything sent:
// it half-closes the connection, and the broker closes its side once it
// has read all before. hpfeeds acknowledges nothing, so this is how a
// publisher learns that nothing was refused without guessing a delay. It
// returns the broker's ERROR (*BrokerError) if one came, nil if the broker
// closed without one, ctx's error if it did not close in time, and
// ErrDisconnected if the connection was already down (its cause was
// reported on Errors). The client does not reconnect after it; call Close.
func (c *Client) Drain(ctx context.Context) error {
	done := make(chan error, 1)
	c.wmu.Lock() // no write is under way: the half-close follows them all
	c.mu.Lock()
	nc := c.nc
	mine := nc != nil && c.drain == nil
	if mine {
		c.drain = done
	}
	c.mu.Unlock()
	if !mine {
		c.wmu.Unlock()
		return ErrDisconnected
	}
	cw, ok := nc.(interface{ CloseWrite() error })
	if ok {
		// It fails when the broker has already closed (it refused
		// something): the reader then tells what the broker sent.
		cw.CloseWrite()
	}
	c.wmu.Unlock()
	if !ok {
		return fmt.Errorf("ending the stream to %s: cannot half-close a %T", c.cfg.Addr, nc)
	}
	select {
	case err := <-done:
		if errors.Is(err, io.EOF) {
			return nil
		}
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close disconnects and stops reconnecting. Messages is closed once the
// reader has stopped.
func (c *Client) Close() error {
	c.cancel()
	c.mu.Lock()
	if c.nc != nil {
		c.nc.Close()
	}
	c.mu.Unlock()
	<-c.done
	return nil
}
