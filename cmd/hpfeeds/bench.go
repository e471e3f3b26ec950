package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/hpfeeds-go/hpfeeds/wire"
)

type benchOpts struct {
	publishers, subscribers int
	size                    int
	count                   int
	duration                time.Duration
	rate                    int
	window                  int
	drain                   time.Duration
	json                    bool
	subPort                 int
}

// BenchResult is what `hpfeeds bench --json` prints.
type BenchResult struct {
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

func newBenchCmd(f *connFlags) *cobra.Command {
	o := &benchOpts{}
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Load the broker and report throughput, latency and losses",
		Long: `Load the broker: publishers send timestamped payloads to one channel
(-c, default "bench"), subscribers count and time them. Every subscriber
must get every message; any shortfall is printed and the exit status is 1.
The ident needs permission to publish and subscribe on the channel.`,
		Example: `  hpfeeds bench -i bench -s secret --publishers 1 --subscribers 10 --size 256 --count 1000000
  hpfeeds bench -i bench -s secret --subscribers 10 --rate 20000 --duration 10s --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			res, err := bench(cmd.Context(), f, o, cmd.OutOrStdout())
			if err != nil {
				return err
			}
			if o.json {
				json.NewEncoder(cmd.OutOrStdout()).Encode(res)
			} else {
				printResult(cmd.OutOrStdout(), res)
			}
			if res.Lost != 0 {
				return fmt.Errorf("%d of %d deliveries lost", res.Lost, res.Expected)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&o.publishers, "publishers", 1, "publishing connections")
	fl.IntVar(&o.subscribers, "subscribers", 10, "subscribing connections")
	fl.IntVar(&o.size, "size", 256, "payload `BYTES` (at least 9: a marker and a timestamp)")
	fl.IntVar(&o.count, "count", 100000, "messages per publisher (unless --duration)")
	fl.DurationVar(&o.duration, "duration", 0, "publish for this long instead of --count")
	fl.IntVar(&o.rate, "rate", 0, "total messages per second across publishers (0: as fast as subscribers keep up)")
	fl.IntVar(&o.window, "window", 20000, "messages a publisher may be ahead of the subscribers (and never more than 32 MiB); 0: no window, publish as fast as TCP allows")
	fl.DurationVar(&o.drain, "drain", 10*time.Second, "how long to wait for deliveries to stop changing before counting losses")
	fl.BoolVar(&o.json, "json", false, "print the result as one JSON object")
	fl.IntVar(&o.subPort, "sub-port", 0, "connect subscribers to this `PORT` of --host instead (another broker of a cluster)")
	return cmd
}

const (
	markBench = 'B'
	markReady = 'R'
)

// latencies is a log-linear histogram of microseconds: 16 sub-buckets per
// power of two, so percentiles are within about 6%.
type latencies struct {
	counts [64 * 16]uint64
	max    uint64
}

func (l *latencies) add(us uint64) {
	l.counts[bucket(us)]++
	l.max = max(l.max, us)
}

func bucket(us uint64) int {
	if us < 16 {
		return int(us)
	}
	e := bits.Len64(us) - 5 // us has e+5 bits: keep the top 5
	return (e+1)*16 + int(us>>e) - 16
}

func bucketValue(i int) float64 {
	if i < 16 {
		return float64(i)
	}
	e := i/16 - 1
	return float64(uint64(i%16+16) << e)
}

func (l *latencies) merge(o *latencies) {
	for i, c := range o.counts {
		l.counts[i] += c
	}
	l.max = max(l.max, o.max)
}

func (l *latencies) quantile(q float64) float64 {
	var total uint64
	for _, c := range l.counts {
		total += c
	}
	if total == 0 {
		return 0
	}
	want := uint64(math.Ceil(q * float64(total)))
	var seen uint64
	for i, c := range l.counts {
		seen += c
		if seen >= want {
			return min(bucketValue(i), float64(l.max))
		}
	}
	return float64(l.max)
}

func dialRaw(ctx context.Context, f *connFlags, frames func(nonce []byte) []byte) (net.Conn, *wire.Reader, error) {
	cfg, err := f.config(os.Stderr)
	if err != nil {
		return nil, nil, err
	}
	d := net.Dialer{Timeout: 10 * time.Second}
	var nc net.Conn
	if cfg.TLS != nil {
		nc, err = (&tls.Dialer{NetDialer: &d, Config: cfg.TLS}).DialContext(ctx, "tcp", cfg.Addr)
	} else {
		nc, err = d.DialContext(ctx, "tcp", cfg.Addr)
	}
	if err != nil {
		return nil, nil, err
	}
	rd := wire.NewReader(nc, wire.UniformLimits(wire.MaxFrameLen))
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	info, err := rd.Next()
	nc.SetReadDeadline(time.Time{})
	if err != nil || info.Op != wire.OpInfo {
		nc.Close()
		return nil, nil, fmt.Errorf("no INFO from %s: %v", cfg.Addr, err)
	}
	if _, err := nc.Write(frames(info.Payload)); err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, rd, nil
}

type subscriber struct {
	linked atomic.Bool // has seen a publisher's probe
	got    atomic.Int64
	lat    latencies
	err    error
	done   chan struct{}
}

func bench(ctx context.Context, f *connFlags, o *benchOpts, out io.Writer) (*BenchResult, error) {
	if o.size < 9 {
		return nil, errors.New("--size must be at least 9")
	}
	if o.publishers < 1 || o.subscribers < 0 {
		return nil, errors.New("need at least one publisher")
	}
	channel := "bench"
	if len(f.channels) > 0 {
		channel = f.channels[0]
	}
	ident, ch := []byte(f.ident), []byte(channel)

	// Subscribers: each subscribes, then publishes a probe and waits for it
	// to come back, which proves its subscription is in place.
	subs := make([]*subscriber, o.subscribers)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	var ready sync.WaitGroup
	for i := range subs {
		s := &subscriber{done: make(chan struct{})}
		subs[i] = s
		probe := []byte{markReady}
		probe = strconv.AppendInt(probe, int64(i), 10)
		sf := *f
		if o.subPort != 0 {
			sf.port = o.subPort
		}
		nc, rd, err := dialRaw(ctx, &sf, func(nonce []byte) []byte {
			b, _ := wire.AppendAuth(nil, nonce, f.ident, f.secret)
			b, _ = wire.AppendSubscribe(b, ident, ch)
			b, _ = wire.AppendPublish(b, ident, ch, probe)
			return b
		})
		if err != nil {
			return nil, fmt.Errorf("subscriber %d: %w", i, err)
		}
		conns = append(conns, nc)
		ready.Add(1)
		go func() {
			defer close(s.done)
			isReady := false
			for {
				fr, err := rd.Next()
				if err != nil {
					if !isReady {
						ready.Done()
					}
					if !errors.Is(err, net.ErrClosed) {
						s.err = err
					}
					return
				}
				if fr.Op == wire.OpError {
					s.err = fmt.Errorf("broker: %s", fr.Payload)
					if !isReady {
						ready.Done()
					}
					return
				}
				if fr.Op != wire.OpPublish || len(fr.Payload) == 0 {
					continue
				}
				switch fr.Payload[0] {
				case markReady:
					if !isReady && string(fr.Payload) == string(probe) {
						isReady = true
						ready.Done()
					}
					if string(fr.Payload) == "Rpub" {
						s.linked.Store(true)
					}
				case markBench:
					sent := int64(binary.BigEndian.Uint64(fr.Payload[1:9]))
					s.lat.add(uint64(max(time.Now().UnixNano()-sent, 0) / 1000))
					s.got.Add(1)
				}
			}
		}()
	}
	ready.Wait()
	for i, s := range subs {
		if s.err != nil {
			return nil, fmt.Errorf("subscriber %d: %w", i, s.err)
		}
	}
	delivered := func() int64 {
		var n int64
		for _, s := range subs {
			n += s.got.Load()
		}
		return n
	}

	var published atomic.Int64
	start := time.Now()
	var deadline time.Time
	var pubErr error
	var pubMu sync.Mutex
	var pubs sync.WaitGroup
	stopProgress := progress(out, start, &published, delivered)
	for p := 0; p < o.publishers; p++ {
		nc, rd, err := dialRaw(ctx, f, func(nonce []byte) []byte {
			b, _ := wire.AppendAuth(nil, nonce, f.ident, f.secret)
			return b
		})
		if err != nil {
			return nil, fmt.Errorf("publisher %d: %w", p, err)
		}
		conns = append(conns, nc)
		if p == 0 {
			// The first publisher probes until every subscriber hears it:
			// across a cluster, interest reaches the publisher's broker
			// some time after the subscriber's SUBSCRIBE.
			probe, _ := wire.AppendPublish(nil, ident, ch, []byte("Rpub"))
			for waited := 0; ; waited++ {
				all := true
				for _, s := range subs {
					all = all && s.linked.Load()
				}
				if all {
					break
				}
				if waited == 500 {
					return nil, errors.New("subscribers never heard the publisher")
				}
				nc.Write(probe)
				time.Sleep(20 * time.Millisecond)
			}
			start = time.Now()
			if o.duration > 0 {
				deadline = start.Add(o.duration)
			}
		}
		go func() { // a refusal arrives as an ERROR
			if fr, err := rd.Next(); err == nil && fr.Op == wire.OpError {
				pubMu.Lock()
				pubErr = fmt.Errorf("broker: %s", fr.Payload)
				pubMu.Unlock()
				nc.Close()
			}
		}()
		pubs.Add(1)
		go func() {
			defer pubs.Done()
			w := bufio.NewWriterSize(nc, 64<<10)
			payload := make([]byte, o.size)
			payload[0] = markBench
			frame, _ := wire.AppendPublish(nil, ident, ch, payload)
			tsAt := len(frame) - o.size + 1
			var interval time.Duration
			if o.rate > 0 {
				interval = time.Duration(float64(time.Second) * float64(o.publishers) / float64(o.rate))
			}
			// Bound what is in flight in bytes too, so large payloads stay
			// within the broker's per-subscriber queue bounds.
			window := int64(max(1, min(o.window, (32<<20)/len(frame))))
			next := time.Now()
			for k := 0; ; k++ {
				if deadline.IsZero() && k >= o.count || !deadline.IsZero() && k%64 == 0 && time.Now().After(deadline) {
					break
				}
				if interval > 0 {
					if d := time.Until(next); d > 0 {
						w.Flush()
						time.Sleep(d)
					}
					next = next.Add(interval)
				} else if o.window > 0 && k%int(min(256, window)) == 0 && o.subscribers > 0 {
					for published.Load()-delivered()/int64(o.subscribers) > window {
						w.Flush()
						time.Sleep(100 * time.Microsecond)
					}
				}
				binary.BigEndian.PutUint64(frame[tsAt:], uint64(time.Now().UnixNano()))
				if _, err := w.Write(frame); err != nil {
					return
				}
				published.Add(1)
			}
			w.Flush()
		}()
	}
	pubs.Wait()
	pubDone := time.Since(start)
	expected := published.Load() * int64(o.subscribers)
	// Wait until everything arrived, or nothing more arrives for o.drain.
	last, lastChange := delivered(), time.Now()
	for last < expected && time.Since(lastChange) < o.drain {
		time.Sleep(5 * time.Millisecond)
		if n := delivered(); n != last {
			last, lastChange = n, time.Now()
		}
	}
	elapsed := time.Since(start)
	stopProgress()
	pubMu.Lock()
	defer pubMu.Unlock()
	if pubErr != nil {
		return nil, pubErr
	}
	var lat latencies
	for _, s := range subs {
		lat.merge(&s.lat)
	}
	got := delivered()
	mb := float64(got) * float64(o.size) / 1e6
	return &BenchResult{
		Publishers: o.publishers, Subscribers: o.subscribers, PayloadBytes: o.size,
		Published: published.Load(), Delivered: got, Expected: expected, Lost: expected - got,
		Seconds:     elapsed.Seconds(),
		PublishedPS: float64(published.Load()) / pubDone.Seconds(),
		DeliveredPS: float64(got) / elapsed.Seconds(),
		MBPS:        mb / elapsed.Seconds(),
		P50us:       lat.quantile(0.50), P99us: lat.quantile(0.99), Maxus: float64(lat.max),
	}, nil
}

// progress prints a line a second on a terminal; it returns a stop function.
func progress(out io.Writer, start time.Time, published *atomic.Int64, delivered func() int64) func() {
	f, ok := out.(*os.File)
	if !ok {
		return func() {}
	}
	if st, err := f.Stat(); err != nil || st.Mode()&os.ModeCharDevice == 0 {
		return func() {}
	}
	stop := make(chan struct{})
	done := make(chan struct{})
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
				fmt.Fprintf(f, "\r\033[K%.0fs: published %d, delivered %d", time.Since(start).Seconds(), published.Load(), delivered())
			}
		}
	}()
	return func() { close(stop); <-done }
}

func printResult(w io.Writer, r *BenchResult) {
	fmt.Fprintf(w, "publishers %d, subscribers %d, payload %d B, %.2f s\n", r.Publishers, r.Subscribers, r.PayloadBytes, r.Seconds)
	fmt.Fprintf(w, "published  %d (%.0f msg/s)\n", r.Published, r.PublishedPS)
	fmt.Fprintf(w, "delivered  %d of %d (%.0f msg/s, %.1f MB/s)\n", r.Delivered, r.Expected, r.DeliveredPS, r.MBPS)
	fmt.Fprintf(w, "latency    p50 %.0f µs, p99 %.0f µs, max %.0f µs\n", r.P50us, r.P99us, r.Maxus)
	if r.Lost != 0 {
		fmt.Fprintf(w, "LOST       %d deliveries\n", r.Lost)
	}
}
