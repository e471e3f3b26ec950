// Command natsbench drives nats-server with the load shape of
// `hpfeeds bench` and prints the same JSON, so bench/run.sh can compare
// the two brokers row by row. Core NATS pub/sub, no JetStream.
package main

import (
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"math/bits"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

type result struct {
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

// The same log-linear latency histogram as hpfeeds bench.
type latencies struct {
	counts [64 * 16]uint64
	max    uint64
}

func bucket(us uint64) int {
	if us < 16 {
		return int(us)
	}
	e := bits.Len64(us) - 5
	return (e+1)*16 + int(us>>e) - 16
}

func bucketValue(i int) float64 {
	if i < 16 {
		return float64(i)
	}
	return float64(uint64(i%16+16) << (i/16 - 1))
}

func (l *latencies) quantile(q float64) float64 {
	var total uint64
	for _, c := range l.counts {
		total += c
	}
	if total == 0 {
		return 0
	}
	want, seen := uint64(math.Ceil(q*float64(total))), uint64(0)
	for i, c := range l.counts {
		if seen += c; seen >= want {
			return min(bucketValue(i), float64(l.max))
		}
	}
	return float64(l.max)
}

func main() {
	url := flag.String("url", nats.DefaultURL, "NATS server")
	pubs := flag.Int("publishers", 1, "")
	nsubs := flag.Int("subscribers", 10, "")
	size := flag.Int("size", 256, "payload bytes (at least 9)")
	count := flag.Int("count", 100000, "messages per publisher")
	duration := flag.Duration("duration", 0, "publish for this long instead of -count")
	rate := flag.Int("rate", 0, "total messages per second (0: as fast as subscribers keep up)")
	window := flag.Int("window", 20000, "messages a publisher may be ahead of the subscribers (0: no window, publish as fast as TCP allows)")
	drain := flag.Duration("drain", 10*time.Second, "")
	subject := flag.String("subject", "bench", "")
	flag.Parse()

	type sub struct {
		got atomic.Int64
		mu  sync.Mutex
		lat latencies
	}
	subs := make([]*sub, *nsubs)
	for i := range subs {
		s := &sub{}
		subs[i] = s
		nc, err := nats.Connect(*url)
		if err != nil {
			fail(err)
		}
		defer nc.Close()
		probe := "R" + strconv.Itoa(i)
		ready := make(chan struct{})
		sb, err := nc.Subscribe(*subject, func(m *nats.Msg) {
			switch m.Data[0] {
			case 'R':
				if string(m.Data) == probe {
					close(ready)
				}
			case 'B':
				sent := int64(binary.BigEndian.Uint64(m.Data[1:9]))
				us := uint64(max(time.Now().UnixNano()-sent, 0) / 1000)
				s.lat.counts[bucket(us)]++
				s.lat.max = max(s.lat.max, us)
				s.got.Add(1)
			}
		})
		if err != nil {
			fail(err)
		}
		sb.SetPendingLimits(-1, -1) // pacing, not the client, bounds the backlog
		nc.Publish(*subject, []byte(probe))
		nc.Flush()
		select {
		case <-ready:
		case <-time.After(10 * time.Second):
			fail(fmt.Errorf("subscriber %d never saw its probe", i))
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
	if *duration > 0 {
		deadline = start.Add(*duration)
	}
	var wg sync.WaitGroup
	for p := 0; p < *pubs; p++ {
		nc, err := nats.Connect(*url)
		if err != nil {
			fail(err)
		}
		defer nc.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			payload := make([]byte, *size)
			payload[0] = 'B'
			var interval time.Duration
			if *rate > 0 {
				interval = time.Duration(float64(time.Second) * float64(*pubs) / float64(*rate))
			}
			paced := *window > 0
			// Bound what is in flight in bytes too, as hpfeeds bench does.
			window := int64(max(1, min(*window, (32<<20)/(*size+16))))
			next := time.Now()
			for k := 0; ; k++ {
				if deadline.IsZero() && k >= *count || !deadline.IsZero() && k%64 == 0 && time.Now().After(deadline) {
					break
				}
				if interval > 0 {
					if d := time.Until(next); d > 0 {
						nc.Flush()
						time.Sleep(d)
					}
					next = next.Add(interval)
				} else if paced && k%int(min(256, window)) == 0 && *nsubs > 0 {
					for published.Load()-delivered()/int64(*nsubs) > window {
						time.Sleep(100 * time.Microsecond)
					}
				}
				binary.BigEndian.PutUint64(payload[1:9], uint64(time.Now().UnixNano()))
				if err := nc.Publish(*subject, payload); err != nil {
					fail(err)
				}
				published.Add(1)
			}
			nc.Flush()
		}()
	}
	wg.Wait()
	pubDone := time.Since(start)
	expected := published.Load() * int64(*nsubs)
	last, lastChange := delivered(), time.Now()
	for last < expected && time.Since(lastChange) < *drain {
		time.Sleep(5 * time.Millisecond)
		if n := delivered(); n != last {
			last, lastChange = n, time.Now()
		}
	}
	elapsed := time.Since(start)
	var lat latencies
	for _, s := range subs {
		for i, c := range s.lat.counts {
			lat.counts[i] += c
		}
		lat.max = max(lat.max, s.lat.max)
	}
	got := delivered()
	r := result{Publishers: *pubs, Subscribers: *nsubs, PayloadBytes: *size,
		Published: published.Load(), Delivered: got, Expected: expected, Lost: expected - got,
		Seconds: elapsed.Seconds(), PublishedPS: float64(published.Load()) / pubDone.Seconds(),
		DeliveredPS: float64(got) / elapsed.Seconds(), MBPS: float64(got) * float64(*size) / 1e6 / elapsed.Seconds(),
		P50us: lat.quantile(0.5), P99us: lat.quantile(0.99), Maxus: float64(lat.max)}
	json.NewEncoder(os.Stdout).Encode(r)
	if r.Lost != 0 {
		os.Exit(1)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "natsbench:", err)
	os.Exit(2)
}
