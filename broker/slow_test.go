package broker_test

import (
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

// paced reads from r at about rate bytes a second, until fast is set.
type paced struct {
	r     io.Reader
	rate  int
	start time.Time
	n     int
	fast  atomic.Bool
}

func (p *paced) Read(b []byte) (int, error) {
	if p.fast.Load() {
		return p.r.Read(b)
	}
	if due := p.start.Add(time.Duration(p.n) * time.Second / time.Duration(p.rate)); time.Until(due) > 0 {
		time.Sleep(time.Until(due))
	}
	n, err := p.r.Read(b[:min(len(b), p.rate/50)])
	p.n += n
	return n, err
}

// countFrames reads c's frames of channel into count until the stream
// ends, and sends what ended it: the ERROR's text, or the read error.
func countFrames(c *brokertest.Client, r io.Reader, channel string, count *atomic.Int64) <-chan string {
	done := make(chan string, 1)
	go func() {
		c.Conn.SetReadDeadline(time.Now().Add(time.Minute))
		rd := wire.NewReader(r, wire.UniformLimits(1<<20))
		for {
			f, err := rd.Next()
			switch {
			case err != nil:
				done <- err.Error()
				return
			case f.Op == wire.OpError:
				done <- string(f.Payload)
				return
			case f.Op == wire.OpPublish && string(f.Channel) == channel:
				count.Add(int64(len(f.Payload)))
			}
		}
	}()
	return done
}

// rates measures what the healthy subscribers got over d, in bytes a
// second.
func rates(d time.Duration, counts ...*atomic.Int64) []float64 {
	before := make([]int64, len(counts))
	for i, c := range counts {
		before[i] = c.Load()
	}
	time.Sleep(d)
	out := make([]float64, len(counts))
	for i, c := range counts {
		out[i] = float64(c.Load()-before[i]) / d.Seconds()
	}
	return out
}

// Slow subscribers cost only themselves, after the stall timeout: a
// sensor publishes 1 KiB messages at 4 MB/s into two channels, each with a
// healthy subscriber; then a subscriber that never reads and two that read
// 200 KB/s and 1 MB/s join the first channel. Each holds the publisher for
// StallTimeout at most and is closed with the backpressure error, and once
// they are gone the healthy subscribers of both channels get at least 90 %
// of the rate they got before (measured over 1.5 s each time, so the test
// takes about 6 s).
func TestSlowSubscribersCostOnlyThemselves(t *testing.T) {
	users := brokertest.NewUsers(auth.User{Ident: "p", Secret: "s", PubChans: []string{"a", "b", "sync"}, SubChans: []string{"sync"}})
	for _, s := range []string{"ha", "hb", "never", "r200", "r1m"} {
		users.Put(auth.User{Ident: s, Secret: "s", SubChans: []string{"a", "b", "sync"}, PubChans: []string{"sync"}})
	}
	const stallTimeout = 250 * time.Millisecond
	srv := brokertest.Start(t, users, func(c *broker.Config) {
		c.StallMark = 1 << 20
		c.StallTimeout = stallTimeout
	})
	var healthy [2]atomic.Int64
	for i, ch := range []string{"a", "b"} {
		c := subscriber(t, srv.Addr, "h"+ch, ch)
		countFrames(c, c.Conn, ch, &healthy[i])
	}
	p := brokertest.Login(t, srv.Addr, "p", "s")
	stop, published := make(chan struct{}), make(chan struct{})
	defer func() { close(stop); <-published }()
	go func() { defer close(published); publishPaced(p, 4<<20, stop) }()

	time.Sleep(300 * time.Millisecond)
	base := rates(1500*time.Millisecond, &healthy[0], &healthy[1])

	small := func(_, _ string, rc syscall.RawConn) error {
		var err error
		rc.Control(func(fd uintptr) { err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 16<<10) })
		return err
	}
	var slow []<-chan string
	for _, s := range []struct {
		ident string
		rate  int
	}{{"never", 0}, {"r200", 200_000}, {"r1m", 1_000_000}} {
		c := brokertest.DialWith(t, srv.Addr, &net.Dialer{Control: small})
		c.Send(c.Auth(s.ident, "s"), brokertest.Subscribe(t, s.ident, "a"))
		r := &paced{r: c.Conn, rate: s.rate, start: time.Now()}
		// Once the broker has closed it, it reads what the socket
		// buffers still hold at full speed, to see why; the one that
		// never reads starts then.
		done := make(chan string, 1)
		go func() {
			brokertest.Eventually(t, "the slow subscriber to be closed", func() bool {
				return srv.Broker.Snapshot().Backpressure[broker.BackpressureKey{Ident: s.ident, Reason: broker.BackpressureStalled}] == 1
			})
			r.fast.Store(true)
		}()
		var n atomic.Int64
		if s.rate > 0 {
			slow = append(slow, countFrames(c, r, "a", &n))
		} else {
			go func() {
				brokertest.Eventually(t, "the never-reading subscriber to be closed", func() bool { return r.fast.Load() })
				done <- <-countFrames(c, r, "a", &n)
			}()
			slow = append(slow, done)
		}
	}
	joined := time.Now()
	for i, done := range slow {
		select {
		case why := <-done:
			if why != wire.ErrBackpressure {
				t.Errorf("slow subscriber %d ended with %q, want the backpressure error", i, why)
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("slow subscriber %d was never closed (closes %v; healthy got %d, %d bytes)", i, srv.Broker.Snapshot().Backpressure, healthy[0].Load(), healthy[1].Load())
		}
	}
	closed := time.Since(joined)
	after := rates(1500*time.Millisecond, &healthy[0], &healthy[1])
	t.Logf("healthy a, b: %.2f, %.2f MB/s before; %.2f, %.2f MB/s after the slow ones were closed (%v after joining); closes %v",
		base[0]/1e6, base[1]/1e6, after[0]/1e6, after[1]/1e6, closed.Round(time.Millisecond), srv.Broker.Snapshot().Backpressure)
	for i, ch := range []string{"a", "b"} {
		if after[i] < 0.9*base[i] {
			t.Errorf("channel %s's healthy subscriber got %.2f MB/s, under 90 %% of its %.2f MB/s before", ch, after[i]/1e6, base[i]/1e6)
		}
	}
}

// publishPaced publishes 1 KiB messages to channels a and b in turn at
// about rate bytes a second, in a write every 10 ms, until stop.
func publishPaced(p *brokertest.Client, rate int, stop <-chan struct{}) {
	payload := strings.Repeat("x", 1<<10)
	var batch []byte
	for i := range rate / 100 / len(payload) {
		ch := []string{"a", "b"}[i%2]
		batch = append(batch, brokertest.Publish(p.T, "p", ch, payload)...)
	}
	p.Conn.SetWriteDeadline(time.Time{})
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	start, sent := time.Now(), 0
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		// Catch up on ticks a busy machine missed.
		for due := int(time.Since(start) / (10 * time.Millisecond)); sent < due; sent++ {
			if _, err := p.Conn.Write(batch); err != nil {
				p.T.Error(fmt.Errorf("publisher: %w", err))
				return
			}
		}
	}
}
