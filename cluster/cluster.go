// Package cluster joins brokers through NATS so that every subscriber gets
// every message published on any broker, exactly once.
//
// Each broker holds one NATS connection. A message published locally is
// delivered locally by the broker and forwarded to NATS as the hpfeeds
// PUBLISH frame itself (so the publisher's ident travels with the payload)
// on a subject encoding its channel. A broker subscribes on NATS only to
// channels that have local subscribers. The connection is made with NoEcho,
// so a broker never receives its own messages back: nothing is delivered
// twice. One connection publishing in order, and one NATS subscription per
// channel delivering in order, keep each publisher's order per channel.
package cluster

import (
	"encoding/base64"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/hpfeeds-go/hpfeeds/broker"
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
	Logger                           *slog.Logger
}

// Subject is the NATS subject for an hpfeeds channel: the prefix, then "c"
// and the channel in unpadded URL-safe base64. Channels are arbitrary
// bytes; this encoding is one-to-one and never yields '.', '*' or '>'.
func Subject(prefix, channel string) string {
	return prefix + ".c" + base64.RawURLEncoding.EncodeToString([]byte(channel))
}

// Stats count what crossed the bridge.
type Stats struct {
	Forwarded, ForwardFailed, Received, Rejected uint64
	Connected                                    bool
}

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
	done    chan struct{}

	forwarded, forwardFailed, received, rejected atomic.Uint64
}

// New connects to NATS. A NATS that is down at start is not fatal: the
// bridge keeps trying, and local publish and delivery work meanwhile.
func New(opts Options) (*Bridge, error) {
	if opts.Prefix == "" {
		opts.Prefix = "hpfeeds"
	}
	if strings.ContainsAny(opts.Prefix, " *>") || strings.HasPrefix(opts.Prefix, ".") || strings.HasSuffix(opts.Prefix, ".") {
		return nil, fmt.Errorf("cluster subject prefix %q: use NATS subject tokens without wildcards", opts.Prefix)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	br := &Bridge{opts: opts, log: opts.Logger, subs: map[string]*nats.Subscription{},
		pending: map[string]bool{}, wake: make(chan struct{}, 1), done: make(chan struct{})}
	no := []nats.Option{
		nats.Name(opts.Name),
		nats.NoEcho(),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		// While disconnected, forwarding fails and is counted instead of
		// piling up in a buffer.
		nats.ReconnectBufSize(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			br.log.Warn("cluster: disconnected from NATS; local delivery continues", "err", err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			br.log.Info("cluster: reconnected to NATS", "server", nc.ConnectedUrlRedacted())
		}),
		nats.ConnectHandler(func(nc *nats.Conn) {
			br.log.Info("cluster: connected to NATS", "server", nc.ConnectedUrlRedacted())
		}),
	}
	if opts.CredsFile != "" {
		no = append(no, nats.UserCredentials(opts.CredsFile))
	}
	if opts.User != "" {
		no = append(no, nats.UserInfo(opts.User, opts.Password))
	}
	if opts.Token != "" {
		no = append(no, nats.Token(opts.Token))
	}
	if opts.CAFile != "" {
		no = append(no, nats.RootCAs(opts.CAFile))
	}
	if opts.CertFile != "" {
		no = append(no, nats.ClientCert(opts.CertFile, opts.KeyFile))
	}
	nc, err := nats.Connect(opts.URLs, no...)
	if err != nil {
		return nil, fmt.Errorf("cluster %s: %w", opts.URLs, err)
	}
	br.nc = nc
	go br.syncInterest()
	return br, nil
}

// Attach sets the broker that receives messages from the cluster. Call it
// once, before the broker serves.
func (br *Bridge) Attach(b *broker.Broker) { br.b.Store(b) }

// Forward implements broker.Bridge.
func (br *Bridge) Forward(channel string, frame []byte) {
	// Publish copies frame into the connection's buffer before returning.
	if err := br.nc.Publish(Subject(br.opts.Prefix, channel), frame); err != nil {
		br.forwardFailed.Add(1)
		return
	}
	br.forwarded.Add(1)
}

// InterestChanged implements broker.Bridge: it notes the channel and lets
// the interest goroutine bring the NATS subscription in line.
func (br *Bridge) InterestChanged(channel string) {
	br.mu.Lock()
	br.pending[channel] = true
	br.mu.Unlock()
	select {
	case br.wake <- struct{}{}:
	default:
	}
}

// syncInterest subscribes on NATS to channels with local subscribers and
// drops the others, reading the broker's current state, so changes that
// race each other settle on the truth.
func (br *Bridge) syncInterest() {
	for {
		select {
		case <-br.done:
			return
		case <-br.wake:
		}
		br.mu.Lock()
		pending := br.pending
		br.pending = map[string]bool{}
		br.mu.Unlock()
		b := br.b.Load()
		if b == nil {
			continue
		}
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

func (br *Bridge) deliver(m *nats.Msg) {
	b := br.b.Load()
	if b == nil || !b.DeliverRemote(m.Data) {
		br.rejected.Add(1)
		return
	}
	br.received.Add(1)
}

// Stats returns the counts so far.
func (br *Bridge) Stats() Stats {
	return Stats{
		Forwarded: br.forwarded.Load(), ForwardFailed: br.forwardFailed.Load(),
		Received: br.received.Load(), Rejected: br.rejected.Load(),
		Connected: br.nc.IsConnected(),
	}
}

// Close leaves the cluster.
func (br *Bridge) Close() {
	close(br.done)
	br.nc.Close()
}

// Collectors are the bridge's Prometheus series.
func (br *Bridge) Collectors() []prometheus.Collector {
	counter := func(name, help string, v *atomic.Uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
			func() float64 { return float64(v.Load()) })
	}
	return []prometheus.Collector{
		counter("hpfeeds_broker_cluster_forwarded_total", "Messages published on this broker and forwarded to the cluster", &br.forwarded),
		counter("hpfeeds_broker_cluster_forward_failed_total", "Messages published on this broker that could not be forwarded to the cluster (NATS unreachable)", &br.forwardFailed),
		counter("hpfeeds_broker_cluster_received_total", "Messages received from the cluster and delivered to local subscribers", &br.received),
		counter("hpfeeds_broker_cluster_rejected_total", "Messages received from the cluster that were not well-formed PUBLISH frames", &br.rejected),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "hpfeeds_broker_cluster_connected", Help: "1 while connected to NATS, 0 otherwise"},
			func() float64 {
				if br.nc.IsConnected() {
					return 1
				}
				return 0
			}),
	}
}

// WaitConnected waits up to d for the NATS connection.
func (br *Bridge) WaitConnected(d time.Duration) error {
	deadline := time.Now().Add(d)
	for !br.nc.IsConnected() {
		if time.Now().After(deadline) {
			return fmt.Errorf("cluster %s: not connected after %v", br.opts.URLs, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}
