// Command catchup measures a retained channel's catch-up: a subscriber
// ident subscribes, disconnects, misses -n messages, reconnects and
// re-SUBSCRIBEs, and the broker is to replay what it missed and go on live
// (the contract of `hpfeeds-broker --retain`). Meanwhile a publisher sends
// live traffic at -rate to a live subscriber of another ident; the result
// is the replay's rate and the live subscriber's latency before and during
// it (also at its socket, from the kernel's receive times), as JSON for
// bench/run.sh. Every message the reconnecting subscriber missed or got
// live must arrive in order: a gap counts as lost and the exit status is
// 1. With -proto nats the same shape runs on nats-server's JetStream, the
// row's anchor (nats.go).
package main

import (
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hpfeeds-go/hpfeeds/internal/loadgen"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

type options struct {
	proto, addr, channel string
	ident, secret        string // the publisher and the live subscriber
	catchup, catchSecret string // the reconnecting subscriber
	n, size, rate        int
	baseline, timeout    time.Duration
}

func main() {
	var o options
	flag.StringVar(&o.proto, "proto", "hpfeeds", "hpfeeds, or nats: the same shape on nats-server's JetStream (a stream on the subject -channel, a durable consumer catching up, a core NATS live subscriber)")
	flag.StringVar(&o.addr, "addr", "127.0.0.1:10000", "broker `host:port`")
	flag.StringVar(&o.channel, "channel", "bench.catchup", "a retained channel")
	flag.StringVar(&o.ident, "ident", "bench", "ident of the publisher and the live subscriber")
	flag.StringVar(&o.secret, "secret", "", "its secret")
	flag.StringVar(&o.catchup, "catchup-ident", "catchup", "ident of the reconnecting subscriber")
	flag.StringVar(&o.catchSecret, "catchup-secret", "", "its secret")
	flag.IntVar(&o.n, "n", 500000, "messages published while the subscriber is away")
	flag.IntVar(&o.size, "size", 256, "payload `BYTES` (at least 17)")
	flag.IntVar(&o.rate, "rate", 2000, "live messages per second before and during the replay")
	flag.DurationVar(&o.baseline, "baseline", time.Second, "how long live traffic flows before the reconnect")
	flag.DurationVar(&o.timeout, "timeout", 10*time.Second, "how long deliveries may stop before the rest is counted lost")
	flag.Parse()
	res, err := run(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "catchup:", err)
		os.Exit(2)
	}
	json.NewEncoder(os.Stdout).Encode(res)
	if res.Lost != 0 {
		os.Exit(1)
	}
}

// result is what run.sh reads.
type result struct {
	Missed     int     `json:"missed"`
	Seconds    float64 `json:"replay_seconds"`
	ReplayedPS float64 `json:"replayed_per_s"`
	LiveP99    float64 `json:"live_p99_us"`
	LiveP50    float64 `json:"live_p50_us"`
	BaseP99    float64 `json:"live_p99_us_before"`
	// The same, at the live subscriber's socket (the kernel's receive
	// time): what the broker and loopback took, without this process.
	// Not measured (omitted) through nats.go.
	SockP99     float64 `json:"live_sock_p99_us,omitempty"`
	SockBaseP99 float64 `json:"live_sock_p99_us_before,omitempty"`
	Received    int64   `json:"received"`
	Duplicates  int64   `json:"duplicates"`
	Lost        int64   `json:"lost"`
}

func run(o options) (*result, error) {
	if o.size < loadgen.MinSize+8 {
		return nil, fmt.Errorf("-size must be at least %d", loadgen.MinSize+8)
	}
	switch o.proto {
	case "nats":
		return runNATS(o)
	case "hpfeeds":
	default:
		return nil, fmt.Errorf("-proto %q: want hpfeeds or nats", o.proto)
	}
	live, err := newLive(o)
	if err != nil {
		return nil, err
	}
	pub, err := dial(o.addr, o.ident, o.secret, "")
	if err != nil {
		return nil, fmt.Errorf("publisher: %w", err)
	}
	defer pub.nc.Close()
	p := newHpfeedsPublisher(pub, o.ident, o.channel, o.size)
	if err := leave(o, pub); err != nil {
		return nil, err
	}
	if err := publishAway(o, p, live); err != nil {
		return nil, err
	}
	return replay(o, p, live, func(cs *catchSub) (func(), error) {
		c, err := dial(o.addr, o.catchup, o.catchSecret, o.channel)
		if err != nil {
			return nil, err
		}
		go cs.read(c.rd)
		return func() { c.nc.Close() }, nil
	})
}

// leave subscribes the catch-up ident, proves the subscription is in place
// with a probe published on pub, and disconnects it: the broker saves its
// position.
func leave(o options, pub *client) error {
	first, err := dial(o.addr, o.catchup, o.catchSecret, o.channel)
	if err != nil {
		return fmt.Errorf("catch-up subscriber: %w", err)
	}
	heard := make(chan struct{})
	go func() {
		defer close(heard)
		for {
			f, err := first.rd.Next()
			if err != nil || f.Op == wire.OpPublish && string(f.Payload) == "Rcatchup" {
				return
			}
		}
	}()
	probe, _ := wire.AppendPublish(nil, []byte(o.ident), []byte(o.channel), []byte("Rcatchup"))
	for waiting := true; waiting; {
		pub.nc.Write(probe)
		select {
		case <-heard:
			waiting = false
		case <-time.After(20 * time.Millisecond):
		}
	}
	first.nc.Close()
	time.Sleep(500 * time.Millisecond) // the broker sees the disconnect before the first message
	return nil
}

// publishAway publishes o.n messages while the catch-up reader is away, as
// fast as the live subscriber takes them.
func publishAway(o options, p *publisher, live *liveSub) error {
	for k := 0; k < o.n; k++ {
		if k%256 == 0 && !live.waitWithin(int64(k)-20000, o.timeout) {
			return fmt.Errorf("the live subscriber stopped at %d of %d", live.got.Load(), k)
		}
		p.send()
	}
	p.flush()
	if !live.waitWithin(int64(o.n), o.timeout) {
		return fmt.Errorf("the live subscriber got %d of %d", live.got.Load(), o.n)
	}
	return nil
}

// replay publishes live for o.baseline, reconnects the catch-up reader
// (connect feeds cs and returns how to disconnect it) and keeps publishing
// live until it has everything it missed and has caught up with the live
// messages.
func replay(o options, p *publisher, live *liveSub, connect func(cs *catchSub) (func(), error)) (*result, error) {
	stop := make(chan struct{})
	done := make(chan struct{})
	live.phase.Store(phaseBefore)
	go func() { defer close(done); p.paced(o.rate, stop) }()
	time.Sleep(o.baseline)
	live.phase.Store(phaseReplay)
	start := time.Now()
	cs := &catchSub{missed: uint64(o.n), replayed: make(chan time.Time, 1)}
	disconnect, err := connect(cs)
	if err != nil {
		close(stop)
		return nil, fmt.Errorf("catch-up reader reconnecting: %w", err)
	}
	defer disconnect()
	var end time.Time
	select {
	case end = <-cs.replayed:
	case <-cs.stalled(o.timeout):
		end = time.Now()
	}
	live.phase.Store(phaseAfter)
	close(stop)
	<-done
	p.flush()
	// The live messages after the replay must follow without a gap.
	for last := time.Now(); cs.next.Load() < p.seq && time.Since(last) < o.timeout; {
		n := cs.next.Load()
		time.Sleep(10 * time.Millisecond)
		if cs.next.Load() != n {
			last = time.Now()
		}
	}
	secs := end.Sub(start).Seconds()
	base, during := live.quantiles(&live.lat)
	sockBase, sockDuring := live.quantiles(&live.sock)
	return &result{
		Missed: o.n, Seconds: secs, ReplayedPS: float64(cs.replayedN.Load()) / secs,
		LiveP99: during.Quantile(0.99), LiveP50: during.Quantile(0.50), BaseP99: base.Quantile(0.99),
		SockP99: sockDuring.Quantile(0.99), SockBaseP99: sockBase.Quantile(0.99),
		Received: cs.received.Load(), Duplicates: cs.dups.Load(),
		Lost: int64(p.seq) - int64(cs.next.Load()) + cs.gaps.Load(),
	}, nil
}

// client is one raw hpfeeds connection.
type client struct {
	nc net.Conn
	rd *wire.Reader
}

// dial logs in as ident, subscribing to channel unless it is empty.
func dial(addr, ident, secret, channel string) (*client, error) {
	nc, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	rd := wire.NewReader(nc, wire.UniformLimits(wire.MaxFrameLen))
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	info, err := rd.Next()
	nc.SetReadDeadline(time.Time{})
	if err != nil || info.Op != wire.OpInfo {
		nc.Close()
		return nil, fmt.Errorf("no INFO from %s: %v", addr, err)
	}
	b, _ := wire.AppendAuth(nil, info.Payload, ident, secret)
	if channel != "" {
		b, _ = wire.AppendSubscribe(b, []byte(ident), []byte(channel))
	}
	if _, err := nc.Write(b); err != nil {
		nc.Close()
		return nil, err
	}
	return &client{nc: nc, rd: rd}, nil
}

func mustFrame(ident, channel string, size int) []byte {
	f, err := wire.AppendPublish(nil, []byte(ident), []byte(channel), make([]byte, size))
	if err != nil {
		fmt.Fprintln(os.Stderr, "catchup:", err)
		os.Exit(2)
	}
	return f
}

// publisher sends numbered, timestamped messages: payload byte 0 is the
// bench mark, 1..8 the send time, 9..16 the sequence number from 0, and
// the rest one of the load generator's bodies.
type publisher struct {
	payload []byte               // where the next message is built
	bodies  [][]byte             // loadgen.Bodies
	emit    func(payload []byte) // sends (or buffers) the message built
	flush   func()               // writes what emit buffered
	seq     uint64
}

// newHpfeedsPublisher publishes PUBLISH frames on c, written in batches of
// up to 64 KiB.
func newHpfeedsPublisher(c *client, ident, channel string, size int) *publisher {
	frame := mustFrame(ident, channel, size)
	var buf []byte
	p := &publisher{payload: frame[len(frame)-size:]}
	p.flush = func() {
		if len(buf) > 0 {
			if _, err := c.nc.Write(buf); err != nil {
				fmt.Fprintln(os.Stderr, "catchup: publisher:", err)
				os.Exit(2)
			}
			buf = buf[:0]
		}
	}
	p.emit = func([]byte) {
		buf = append(buf, frame...)
		if len(buf) >= 64<<10 {
			p.flush()
		}
	}
	return p
}

func (p *publisher) send() {
	p.payload[0] = loadgen.MarkBench
	binary.BigEndian.PutUint64(p.payload[1:9], uint64(time.Now().UnixNano()))
	binary.BigEndian.PutUint64(p.payload[9:17], p.seq)
	if p.bodies == nil {
		p.bodies = loadgen.Bodies(len(p.payload))
	}
	copy(p.payload[loadgen.MinSize:], p.bodies[p.seq%uint64(len(p.bodies))])
	p.seq++
	p.emit(p.payload)
}

// paced publishes rate messages a second, in 1 ms ticks, until stop.
func (p *publisher) paced(rate int, stop <-chan struct{}) {
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	start := time.Now()
	var sent int64
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		for due := int64(time.Since(start).Seconds() * float64(rate)); sent < due; sent++ {
			p.send()
		}
		p.flush()
	}
}

// What the live subscriber's latencies are counted in: only those before
// the reconnect (once the burst is over) and during the replay.
const (
	phaseBurst = iota
	phaseBefore
	phaseReplay
	phaseAfter
)

// liveSub is the subscriber that stays connected; its latencies are kept
// apart before and during the replay.
type liveSub struct {
	got   atomic.Int64
	phase atomic.Int32
	sc    *stampedConn
	mu    sync.Mutex
	lat   [phaseAfter]loadgen.Latencies // read by this process: phaseBefore and phaseReplay
	sock  [phaseAfter]loadgen.Latencies // in its socket (the kernel's receive time)
}

func newLive(o options) (*liveSub, error) {
	c, err := dial(o.addr, o.ident, o.secret, o.channel)
	if err != nil {
		return nil, fmt.Errorf("live subscriber: %w", err)
	}
	sc, err := newStampedConn(c.nc)
	if err != nil {
		return nil, fmt.Errorf("live subscriber: kernel receive times: %w", err)
	}
	// The frames after INFO are read through sc: dial read only INFO.
	c.rd = wire.NewReader(sc, wire.UniformLimits(wire.MaxFrameLen))
	probe, _ := wire.AppendPublish(nil, []byte(o.ident), []byte(o.channel), []byte("Rlive"))
	c.nc.Write(probe)
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := c.rd.Next()
		if err != nil {
			return nil, fmt.Errorf("live subscriber never heard its probe: %w", err)
		}
		if f.Op == wire.OpPublish && string(f.Payload) == "Rlive" {
			break
		}
	}
	c.nc.SetReadDeadline(time.Time{})
	l := &liveSub{sc: sc}
	go l.read(c.rd)
	return l, nil
}

func (l *liveSub) read(rd *wire.Reader) {
	for {
		f, err := rd.Next()
		if err != nil {
			return
		}
		if f.Op == wire.OpPublish {
			l.record(f.Payload, l.sc.last)
		}
	}
}

// record counts a live message and its latency, and the time it reached
// the socket if known (inSock is zero if not).
func (l *liveSub) record(payload []byte, inSock time.Time) {
	if len(payload) < loadgen.MinSize || payload[0] != loadgen.MarkBench {
		return
	}
	if ph := l.phase.Load(); ph == phaseBefore || ph == phaseReplay {
		sent := int64(binary.BigEndian.Uint64(payload[1:9]))
		l.mu.Lock()
		l.lat[ph].Add(uint64(max(time.Now().UnixNano()-sent, 0) / 1000))
		if !inSock.IsZero() {
			l.sock[ph].Add(uint64(max(inSock.UnixNano()-sent, 0) / 1000))
		}
		l.mu.Unlock()
	}
	l.got.Add(1)
}

// waitWithin waits until the live subscriber got n, or got nothing new
// for timeout.
func (l *liveSub) waitWithin(n int64, timeout time.Duration) bool {
	last, since := l.got.Load(), time.Now()
	for l.got.Load() < n {
		time.Sleep(100 * time.Microsecond)
		if g := l.got.Load(); g != last {
			last, since = g, time.Now()
		} else if time.Since(since) > timeout {
			return false
		}
	}
	return true
}

func (l *liveSub) quantiles(lat *[phaseAfter]loadgen.Latencies) (before, during *loadgen.Latencies) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, d := lat[phaseBefore], lat[phaseReplay]
	return &b, &d
}

// catchSub is the reconnected subscriber: it checks the sequence and
// notes when the last missed message arrived.
type catchSub struct {
	missed               uint64
	next                 atomic.Uint64 // the sequence number expected next
	received, dups, gaps atomic.Int64
	replayedN            atomic.Int64 // missed messages received, in order
	replayed             chan time.Time
}

func (c *catchSub) read(rd *wire.Reader) {
	for {
		f, err := rd.Next()
		if err != nil {
			return
		}
		if f.Op == wire.OpPublish {
			c.note(f.Payload)
		}
	}
}

// note checks one message's sequence number. One goroutine calls it.
func (c *catchSub) note(payload []byte) {
	if len(payload) < loadgen.MinSize+8 || payload[0] != loadgen.MarkBench {
		return
	}
	c.received.Add(1)
	seq, next := binary.BigEndian.Uint64(payload[9:17]), c.next.Load()
	switch {
	case seq < next:
		c.dups.Add(1)
		return
	case seq > next:
		c.gaps.Add(int64(seq - next))
	}
	c.next.Store(seq + 1)
	if seq < c.missed {
		c.replayedN.Add(1)
	}
	// The replay is over with the last missed message, or the first live
	// one if the last missed never came.
	if next < c.missed && seq+1 >= c.missed {
		c.replayed <- time.Now()
	}
}

// stalled closes its channel once the subscriber's progress stopped for
// timeout.
func (c *catchSub) stalled(timeout time.Duration) <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		last, since := c.next.Load(), time.Now()
		for time.Since(since) < timeout {
			time.Sleep(10 * time.Millisecond)
			if n := c.next.Load(); n != last {
				last, since = n, time.Now()
			}
		}
	}()
	return ch
}
