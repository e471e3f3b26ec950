package broker

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/retain"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

// Defaults of the spec's limits (section 3).
const (
	DefaultName                 = "hpfeeds"
	DefaultAuthTimeout          = 10 * time.Second
	DefaultLookupTimeout        = 5 * time.Second
	DefaultMaxPublishSize       = 1 << 20 // the reference's: its Python clients drop a larger frame
	DefaultMaxSubscribeSize     = 1 << 20
	DefaultPreAuthMaxSize       = wire.PreAuthMaxLen
	DefaultSendQueueSoft        = 52_429_050 // the reference's 50 × (5 + 1 MiB)
	DefaultSendQueueLow         = DefaultSendQueueSoft / 4
	DefaultSendQueueHard        = 2 * DefaultSendQueueSoft
	DefaultBackpressureDeadline = 60 * time.Second
	DefaultFlushTimeout         = 5 * time.Second
	DefaultStallMark            = 4 << 20
	DefaultStallTimeout         = time.Second
	DefaultFrameTimeout         = 60 * time.Second
	DefaultRevalidateEvery      = time.Minute
)

// Config is what a Broker needs. Zero fields take the defaults above.
type Config struct {
	// Name is sent in INFO; at most 255 bytes.
	Name string
	// Auth answers every AUTH. Required.
	Auth   auth.Store
	Logger *slog.Logger

	// AuthTimeout closes a connection that has not authenticated in time.
	AuthTimeout time.Duration
	// LookupTimeout bounds one credential lookup.
	LookupTimeout time.Duration
	// PreAuthMaxSize bounds any frame before authentication (whole frame).
	PreAuthMaxSize int
	// MaxPublishSize bounds a PUBLISH body (ident, channel and payload).
	MaxPublishSize int
	// MaxSubscribeSize bounds a SUBSCRIBE or UNSUBSCRIBE body.
	MaxSubscribeSize int

	// A subscriber's queue past SendQueueSoft bytes starts a deadline of
	// BackpressureDeadline; draining to SendQueueLow cancels it; expiry or
	// SendQueueHard closes the subscriber.
	SendQueueSoft        int
	SendQueueLow         int
	SendQueueHard        int
	BackpressureDeadline time.Duration
	// A subscriber's queue past StallMark bytes pauses the connections
	// publishing into it before their next read, for at most MaxStall
	// each time, until it drains to half the mark (flow control).
	StallMark int
	// StallTimeout closes a subscriber, with the backpressure error, that
	// has been past StallMark this long without draining to half of it:
	// a slow subscriber holds its channel (and its publishers' other
	// channels) for this long at most. Negative: never.
	StallTimeout time.Duration
	// FrameTimeout closes an authenticated connection whose frame in
	// progress is not complete within it.
	FrameTimeout time.Duration
	// MemoryLimit is the budget, in bytes, of every send queue and
	// partially received frame together; zero means none. Past a quarter
	// of it large partial frames are paused, past three quarters
	// publishers (see MaxStall); past all of it the subscribers holding
	// the most queued bytes are closed.
	MemoryLimit int64
	// MaxConnections bounds the connections open at once, authenticated or
	// not, and MaxConnectionsPerIP those from one source address; zero
	// means no bound. A connection past a bound is closed as soon as it is
	// accepted, before INFO.
	MaxConnections      int
	MaxConnectionsPerIP int

	// LoginThrottle checks one at a time the logins of a source that failed many.
	LoginThrottle ThrottleConfig

	// Bridge, if set, shares channels with other brokers.
	Bridge Bridge
	// Retain, if set, stores the channels it retains and replays them to
	// subscribers by ident (see retain.go).
	Retain *retain.Engine

	// FlushTimeout bounds writing the last frames and the ERROR to a
	// connection being closed.
	FlushTimeout time.Duration

	// AfterAcceptBurst, if set, runs on its own goroutine once accepts have
	// paused for 5 s after a burst of connections. The command uses it to
	// return a reconnect storm's memory to the OS: logging in grows each
	// connection's goroutine stack and leaves garbage, and an idle broker
	// runs no collection for minutes. It never runs after Shutdown.
	AfterAcceptBurst func()

	// RevalidateEvery is how often each live session's ident is looked up
	// again, so a removed user, a changed secret or changed channels take
	// effect without a new login. Negative: never.
	RevalidateEvery time.Duration
}

func (c *Config) setDefaults() error {
	if c.Auth == nil {
		return fmt.Errorf("broker: no credential store configured")
	}
	if c.Name == "" {
		c.Name = DefaultName
	}
	if len(c.Name) > wire.MaxStr8 {
		return fmt.Errorf("broker name is %d bytes; INFO carries at most 255", len(c.Name))
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defd := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	defd(&c.AuthTimeout, DefaultAuthTimeout)
	defd(&c.LookupTimeout, DefaultLookupTimeout)
	defd(&c.BackpressureDeadline, DefaultBackpressureDeadline)
	defd(&c.FlushTimeout, DefaultFlushTimeout)
	if c.RevalidateEvery == 0 {
		c.RevalidateEvery = DefaultRevalidateEvery
	}
	c.LoginThrottle.setDefaults()
	def(&c.PreAuthMaxSize, DefaultPreAuthMaxSize)
	def(&c.MaxPublishSize, DefaultMaxPublishSize)
	def(&c.MaxSubscribeSize, DefaultMaxSubscribeSize)
	def(&c.SendQueueSoft, DefaultSendQueueSoft)
	def(&c.SendQueueLow, c.SendQueueSoft/4)
	def(&c.SendQueueHard, 2*c.SendQueueSoft)
	def(&c.StallMark, min(DefaultStallMark, c.SendQueueSoft/2))
	defd(&c.FrameTimeout, DefaultFrameTimeout)
	if c.StallTimeout == 0 {
		c.StallTimeout = DefaultStallTimeout
	}

	if c.PreAuthMaxSize < wire.HeaderLen+2+wire.HashLen {
		return fmt.Errorf("pre-auth frame limit %d is too small for any AUTH", c.PreAuthMaxSize)
	}
	if wire.HeaderLen+c.MaxPublishSize > wire.MaxFrameLen || wire.HeaderLen+c.MaxSubscribeSize > wire.MaxFrameLen {
		return fmt.Errorf("frame limits must stay under 2 GiB: clients read the length as signed")
	}
	if c.MaxConnections < 0 || c.MaxConnectionsPerIP < 0 {
		return fmt.Errorf("connection limits must be 0 (no limit) or more")
	}
	if !(c.SendQueueLow < c.SendQueueSoft && c.SendQueueSoft <= c.SendQueueHard) {
		return fmt.Errorf("send queue marks must satisfy low < soft <= hard (got %d, %d, %d)",
			c.SendQueueLow, c.SendQueueSoft, c.SendQueueHard)
	}
	if c.SendQueueHard < wire.HeaderLen+c.MaxPublishSize {
		return fmt.Errorf("send queue hard bound %d is under the largest PUBLISH frame %d: such a frame could never be delivered",
			c.SendQueueHard, wire.HeaderLen+c.MaxPublishSize)
	}
	if c.MemoryLimit < 0 || c.MemoryLimit > 0 && c.MemoryLimit < 2*int64(wire.HeaderLen+c.MaxPublishSize) {
		return fmt.Errorf("memory limit %d bytes: give 0 (none) or at least twice the largest PUBLISH frame (%d bytes)",
			c.MemoryLimit, wire.HeaderLen+c.MaxPublishSize)
	}
	return nil
}

// limits returns the frame limits before and after authentication.
func (c *Config) limits() (pre, post wire.Limits) {
	pre = wire.UniformLimits(c.PreAuthMaxSize)
	post = pre
	post[wire.OpPublish] = wire.HeaderLen + c.MaxPublishSize
	post[wire.OpSubscribe] = wire.HeaderLen + c.MaxSubscribeSize
	post[wire.OpUnsubscribe] = wire.HeaderLen + c.MaxSubscribeSize
	return pre, post
}
