// Package loadgen is the load generator behind `hpfeeds bench` and
// bench/natsbench: publishers send timestamped payloads at a rate or within
// a window of what subscribers have received, subscribers count them and
// time them, and both brokers' runs are reported as the same Result.
package loadgen

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// A payload's first byte says what it is and the next 8 are its run's ID,
// so that runs sharing a channel count only their own messages; a
// benchmark payload carries its send time (Unix ns, big-endian) in the 8
// after.
const (
	MarkBench = 'B'
	MarkReady = 'R' // probes that tell a subscriber is in place
	// MinSize is the smallest payload: the mark, the run ID and the
	// timestamp.
	MinSize = 17
)

// RunID tells one run's payloads from another's on a shared channel.
type RunID [8]byte

// NewRunID returns a random ID.
func NewRunID() RunID {
	var id RunID
	rand.Read(id[:]) // never fails: crypto/rand crashes the program rather than return weak bytes
	return id
}

// Probe is a MarkReady payload of this run, told apart by name.
func (id RunID) Probe(name string) []byte {
	return append(append([]byte{MarkReady}, id[:]...), name...)
}

// owns reports whether payload is one of this run's.
func (id RunID) owns(payload []byte) bool {
	return len(payload) >= MinSize && bytes.Equal(payload[1:9], id[:])
}

// Config is the shape of the load.
type Config struct {
	Publishers, Subscribers int
	Size                    int           // payload bytes, at least MinSize
	Count                   int           // messages per publisher, unless Duration
	Duration                time.Duration // publish for this long instead of Count
	Rate                    int           // total messages per second; 0: as fast as the window allows
	Window                  int           // messages a publisher may be ahead of the subscribers; 0: none
	FrameBytes              int           // a message's size on the wire, to bound the window to 32 MiB
	Drain                   time.Duration // how long deliveries may stop changing before losses are counted
	Run                     RunID         // written into every payload; sinks count only their run's
}

// AddFlags defines the load's flags on fs, with their defaults.
func (c *Config) AddFlags(fs *flag.FlagSet) {
	fs.IntVar(&c.Publishers, "publishers", 1, "publishing connections")
	fs.IntVar(&c.Subscribers, "subscribers", 10, "subscribing connections")
	fs.IntVar(&c.Size, "size", 256, "payload `BYTES` (at least 17: a marker, the run's ID and a timestamp)")
	fs.IntVar(&c.Count, "count", 100000, "messages per publisher (unless a duration is given)")
	fs.DurationVar(&c.Duration, "duration", 0, "publish for this long instead of a count")
	fs.IntVar(&c.Rate, "rate", 0, "total messages per second across publishers (0: as fast as subscribers keep up)")
	fs.IntVar(&c.Window, "window", 20000, "messages a publisher may be ahead of the subscribers (and never more than 32 MiB); 0: no window, publish as fast as TCP allows")
	fs.DurationVar(&c.Drain, "drain", 10*time.Second, "how long to wait for deliveries to stop changing before counting losses")
}

// Result is what a run measured; `hpfeeds bench --json` and natsbench
// print it.
type Result struct {
	Publishers   int     `json:"publishers"`
	Subscribers  int     `json:"subscribers"`
	PayloadBytes int     `json:"payload_bytes"`
	Published    int64   `json:"published"`
	Delivered    int64   `json:"delivered"`
	Expected     int64   `json:"expected"`
	Lost         int64   `json:"lost"`
	Seconds      float64 `json:"seconds"`
	PublishedPS  float64 `json:"published_per_s"`
	DeliveredPS  float64 `json:"delivered_per_s"`
	MBPS         float64 `json:"delivered_mb_per_s"`
	P50us        float64 `json:"latency_p50_us"`
	P99us        float64 `json:"latency_p99_us"`
	Maxus        float64 `json:"latency_max_us"`
}

// Publisher is one publishing connection.
type Publisher interface {
	// Send publishes payload. It is the same slice at every call; only its
	// first Varying(len(payload)) bytes change. It may buffer.
	Send(payload []byte) error
	// Flush pushes out what Send buffered; the generator calls it before
	// it sleeps to pace.
	Flush() error
	// Done follows the last Send.
	Done() error
}

// Sink is one subscriber's count and latencies. Record is called from one
// goroutine at a time; mu keeps Run's merge from reading the latencies
// while a late delivery (after the drain gave up) is recorded.
type Sink struct {
	run RunID
	got atomic.Int64
	mu  sync.Mutex
	lat Latencies
}

// NewSink returns a sink that counts run's payloads only.
func NewSink(run RunID) *Sink { return &Sink{run: run} }

// Record counts a benchmark payload of the sink's run and its latency, and
// ignores another run's.
func (s *Sink) Record(payload []byte) {
	if !s.run.owns(payload) {
		return
	}
	sent := int64(binary.BigEndian.Uint64(payload[9:MinSize]))
	s.mu.Lock()
	s.lat.Add(uint64(max(time.Now().UnixNano()-sent, 0) / 1000))
	s.mu.Unlock()
	s.got.Add(1)
}

// Run publishes through pubs, connected and heard by every sink, and waits
// for the deliveries; with progress set to a terminal it prints a line a
// second there. A publisher whose Send fails stops; the loss shows in the
// Result.
func Run(cfg Config, pubs []Publisher, sinks []*Sink, progress io.Writer) *Result {
	r := &run{cfg: cfg, sinks: sinks, bodies: Bodies(cfg.Size)} // built once, before the clock starts
	r.start = time.Now()
	if cfg.Duration > 0 {
		r.deadline = r.start.Add(cfg.Duration)
	}
	stop := r.progress(progress)
	var wg sync.WaitGroup
	for _, p := range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.publish(p)
		}()
	}
	wg.Wait()
	pubDone := time.Since(r.start)
	expected := r.published.Load() * int64(len(sinks))
	// Wait until everything arrived, or nothing more arrives for Drain.
	last, lastChange := r.delivered(), time.Now()
	for last < expected && time.Since(lastChange) < cfg.Drain {
		time.Sleep(5 * time.Millisecond)
		if n := r.delivered(); n != last {
			last, lastChange = n, time.Now()
		}
	}
	elapsed := time.Since(r.start)
	stop()
	var lat Latencies
	for _, s := range sinks {
		s.mu.Lock()
		lat.Merge(&s.lat)
		s.mu.Unlock()
	}
	got, published := r.delivered(), r.published.Load()
	return &Result{
		Publishers: len(pubs), Subscribers: len(sinks), PayloadBytes: cfg.Size,
		Published: published, Delivered: got, Expected: expected, Lost: expected - got,
		Seconds:     elapsed.Seconds(),
		PublishedPS: float64(published) / pubDone.Seconds(),
		DeliveredPS: float64(got) / elapsed.Seconds(),
		MBPS:        float64(got) * float64(cfg.Size) / 1e6 / elapsed.Seconds(),
		P50us:       lat.Quantile(0.50), P99us: lat.Quantile(0.99), Maxus: float64(lat.Max()),
	}
}

type run struct {
	cfg       Config
	sinks     []*Sink
	bodies    [][]byte // Bodies, shared by the publishers
	start     time.Time
	deadline  time.Time
	published atomic.Int64
}

func (r *run) delivered() int64 {
	var n int64
	for _, s := range r.sinks {
		n += s.got.Load()
	}
	return n
}

// publish sends one publisher's share, paced by Rate or held within Window.
func (r *run) publish(p Publisher) {
	cfg := r.cfg
	payload := make([]byte, cfg.Size)
	payload[0] = MarkBench
	copy(payload[1:9], cfg.Run[:])
	var interval time.Duration
	if cfg.Rate > 0 {
		interval = time.Duration(float64(time.Second) * float64(cfg.Publishers) / float64(cfg.Rate))
	}
	// Bound what is in flight in bytes too, so large payloads stay within
	// the broker's per-subscriber queue bounds.
	window := int64(max(1, min(cfg.Window, (32<<20)/max(cfg.FrameBytes, 1))))
	subs := int64(len(r.sinks))
	next := time.Now()
	for k := 0; !r.deadline.IsZero() || k < cfg.Count; k++ {
		if interval > 0 {
			if !r.deadline.IsZero() && next.After(r.deadline) {
				time.Sleep(time.Until(r.deadline)) // the run lasts its duration, never longer
				break
			}
			if d := time.Until(next); d > 0 {
				time.Sleep(d)
			}
			next = next.Add(interval)
		} else if cfg.Window > 0 && k%int(min(256, window)) == 0 && subs > 0 && !r.waitWindow(p, window, subs) {
			break
		}
		// The send time, read for every message anyway, also ends a
		// timed run on time.
		now := time.Now()
		if !r.deadline.IsZero() && now.After(r.deadline) {
			break
		}
		binary.BigEndian.PutUint64(payload[9:MinSize], uint64(now.UnixNano()))
		if len(r.bodies) > 1 || k == 0 {
			copy(payload[MinSize:], r.bodies[k%len(r.bodies)])
		}
		if p.Send(payload) != nil {
			return
		}
		if interval > 0 {
			// A paced publisher writes each message when it is due, as a
			// sensor writes each event: how many share a write then does
			// not depend on how late the load generator's sleeps wake,
			// which differs between the brokers' runs.
			p.Flush()
		}
		r.published.Add(1)
	}
	p.Done()
}

// waitWindow waits until the subscribers have received all but window of
// what was published. It reports false when deliveries stopped for Drain
// first: messages were lost, the window will never close, and the
// publisher stops so the loss is reported rather than waited on forever.
func (r *run) waitWindow(p Publisher, window, subs int64) bool {
	last, since := r.delivered(), time.Now()
	for r.published.Load()-r.delivered()/subs > window {
		p.Flush()
		time.Sleep(100 * time.Microsecond)
		if n := r.delivered(); n != last {
			last, since = n, time.Now()
		} else if time.Since(since) > r.cfg.Drain {
			return false
		}
	}
	return true
}

// progress prints a line a second while out is a terminal; it returns a
// stop function.
func (r *run) progress(out io.Writer) func() {
	f, ok := out.(*os.File)
	if !ok {
		return func() {}
	}
	if st, err := f.Stat(); err != nil || st.Mode()&os.ModeCharDevice == 0 {
		return func() {}
	}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				fmt.Fprint(f, "\r\033[K")
				return
			case <-t.C:
				fmt.Fprintf(f, "\r\033[K%.0fs: published %d, delivered %d", time.Since(r.start).Seconds(), r.published.Load(), r.delivered())
			}
		}
	}()
	return func() { close(stop); <-done }
}
