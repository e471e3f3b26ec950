package broker_test

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

// The adversarial suite: hostile or broken clients in numbers, each test
// checking that well-behaved clients are still served in full and that
// nothing is left behind.

// expectRefused checks that a connection is closed before INFO.
func expectRefused(t *testing.T, nc net.Conn) {
	t.Helper()
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(nc)
	if len(b) != 0 || err != nil && !brokertest.IsReset(err) {
		t.Fatalf("refused connection read %d bytes, err %v", len(b), err)
	}
}

func dialFrom(t *testing.T, local, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 5 * time.Second}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return nc
}

func TestConnectionLimits(t *testing.T) {
	log := &brokertest.Log{}
	srv := brokertest.Start(t, testUsers(), func(c *broker.Config) {
		c.MaxConnections = 3
		c.Logger = log.Logger()
	})
	var open []*brokertest.Client
	for i := 0; i < 3; i++ {
		open = append(open, brokertest.Login(t, srv.Addr, "both", "bothsecret"))
	}
	open[2].Sync("both")
	for i := 0; i < 50; i++ {
		expectRefused(t, dialFrom(t, "127.0.0.1", srv.Addr))
	}
	if got := srv.Broker.Snapshot().Refused[broker.RefusedMaxConnections]; got != 50 {
		t.Errorf("refused %d, want 50", got)
	}
	// 50 refusals, one log line: a flood cannot flood the log.
	if n := log.Count("connection refused: connection limit reached (further refusals are logged at most every 10 s)\" reason=max-connections"); n != 1 {
		t.Errorf("%d log lines for 50 refusals:\n%s", n, log.String())
	}
	// The connections already open are served throughout.
	open[0].Sync("both")
	open[0].Conn.Close()
	brokertest.Eventually(t, "a slot to free", func() bool { return srv.Broker.Snapshot().Connections == 2 })
	brokertest.Login(t, srv.Addr, "both", "bothsecret").Sync("both")
}

// While a credential store is down, a flood of logins is refused one by
// one and counted, but logged once: the line names the store and the cause.
func TestStoreDownLogsOnce(t *testing.T) {
	log := &brokertest.Log{}
	srv := brokertest.Start(t, failingStore{}, func(c *broker.Config) {
		c.Logger = log.Logger()
	})
	for i := 0; i < 50; i++ {
		c := brokertest.Dial(t, srv.Addr)
		c.Send(c.Auth("sensor", "s3cret"))
		c.ExpectError("Authentication failed for sensor")
	}
	brokertest.Eventually(t, "50 store errors counted", func() bool {
		return srv.Broker.Snapshot().Errors[broker.ErrorKey{Ident: "", Category: broker.CategoryErrorCheckingIdent}] == 50
	})
	if n := log.Count("credential lookup failed"); n != 1 {
		t.Errorf("%d log lines for 50 failed lookups:\n%s", n, log.String())
	}
	if n := log.Count("store=failing err=\"connection refused\""); n != 1 {
		t.Errorf("the line does not name the store and the cause:\n%s", log.String())
	}
}

func TestConnectionLimitPerIP(t *testing.T) {
	srv := brokertest.Start(t, testUsers(), func(c *broker.Config) { c.MaxConnectionsPerIP = 2 })
	a := dialFrom(t, "127.0.0.1", srv.Addr)
	dialFrom(t, "127.0.0.1", srv.Addr)
	brokertest.Eventually(t, "two connections", func() bool { return srv.Broker.Snapshot().Connections == 2 })
	expectRefused(t, dialFrom(t, "127.0.0.1", srv.Addr))
	// Another source address has its own allowance.
	other := dialFrom(t, "127.0.0.2", srv.Addr)
	other.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := wire.NewReader(other, wire.UniformLimits(1024)).Next(); err != nil {
		t.Fatalf("127.0.0.2 got no INFO: %v", err)
	}
	if got := srv.Broker.Snapshot().Refused[broker.RefusedMaxConnectionsPerIP]; got != 1 {
		t.Errorf("refused %d, want 1", got)
	}
	a.Close()
	brokertest.Eventually(t, "a slot to free", func() bool { return srv.Broker.Snapshot().Connections == 2 })
	brokertest.Login(t, srv.Addr, "both", "bothsecret").Sync("both")
}

// A good subscriber gets every message of a good publisher, in order,
// while 200 connections throw random bytes and malformed frames at the
// broker, before and after authenticating.
func TestGarbageStorm(t *testing.T) {
	srv := brokertest.Start(t, testUsers(), func(c *broker.Config) { c.AuthTimeout = time.Second })
	s := brokertest.Login(t, srv.Addr, "sub", "subsecret")
	s.SubscribeSync("sub", "chan")
	p := brokertest.Login(t, srv.Addr, "pub", "pubsecret")

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var storms atomic.Int64
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			junk := make([]byte, 2048)
			for {
				select {
				case <-stop:
					return
				default:
				}
				nc, err := net.Dial("tcp", srv.Addr)
				if err != nil {
					continue
				}
				rand.Read(junk)
				if i%2 == 1 {
					// Authenticated first: garbage hits the session, not AUTH.
					rd := wire.NewReader(nc, wire.UniformLimits(1024))
					nc.SetDeadline(time.Now().Add(5 * time.Second))
					if info, err := rd.Next(); err == nil {
						a, _ := wire.AppendAuth(nil, info.Payload, "both", "bothsecret")
						nc.Write(a)
					}
				}
				nc.Write(junk)
				nc.Close()
				storms.Add(1)
			}
		}()
	}
	// The storm is under way before the first publish and goes on until
	// the last delivery, however the machine schedules the two.
	brokertest.Eventually(t, "200 garbage connections", func() bool { return storms.Load() >= 200 })
	before := storms.Load()
	const n = 2000
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < n; i++ {
			s.ExpectMessage("pub", "chan", strings.Repeat("m", i%512)+"#")
		}
	}()
	for i := 0; i < n; i++ {
		p.Send(brokertest.Publish(t, "pub", "chan", strings.Repeat("m", i%512)+"#"))
	}
	<-done
	during := storms.Load() - before
	close(stop)
	wg.Wait()
	t.Logf("%d garbage connections during %d deliveries", during, n)
	if during == 0 {
		t.Errorf("no garbage connection during the deliveries: the storm did not overlap them")
	}
}

// Connections that never finish AUTH (slowloris) are closed by the auth
// timeout, and the broker's connection count returns to its baseline.
func TestSlowloris(t *testing.T) {
	srv := brokertest.Start(t, testUsers(), func(c *broker.Config) { c.AuthTimeout = 300 * time.Millisecond })
	good := brokertest.Login(t, srv.Addr, "both", "bothsecret")
	good.Sync("both")
	const n = 300
	conns := make([]net.Conn, n)
	for i := range conns {
		nc, err := net.Dial("tcp", srv.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		nc.Write([]byte{0, 0}) // half a header, then nothing
		conns[i] = nc
	}
	for _, nc := range conns {
		nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		// INFO, then the close: never an endless wait.
		if _, err := io.ReadAll(nc); err != nil && !brokertest.IsReset(err) {
			t.Fatalf("slow connection not closed: %v", err)
		}
	}
	brokertest.Eventually(t, "baseline", func() bool { return srv.Broker.Snapshot().Connections == 1 })
	good.Sync("both")
}

// 2,000 logins with a wrong secret are each refused with the spec's text,
// counted without their ident, and a good client is served meanwhile.
func TestAuthFlood(t *testing.T) {
	srv := brokertest.Start(t, testUsers())
	good := brokertest.Login(t, srv.Addr, "both", "bothsecret")
	const n, workers = 2000, 50
	var wg sync.WaitGroup
	var refused atomic.Int64
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < n/workers; i++ {
				c := brokertest.Login(t, srv.Addr, "both", "guess")
				f := c.Next()
				if f.Op == wire.OpError && string(f.Payload) == "Authentication failed for both" {
					refused.Add(1)
				}
				c.Conn.Close()
			}
		}()
	}
	for i := 0; i < 20; i++ {
		good.Sync("both")
	}
	wg.Wait()
	if refused.Load() != n {
		t.Fatalf("%d of %d wrong logins refused with the spec's text", refused.Load(), n)
	}
	if got := srv.Broker.Snapshot().Errors[broker.ErrorKey{Ident: "", Category: broker.CategoryInvalidSecret}]; got != n {
		t.Errorf("invalid-secret count %d, want %d", got, n)
	}
}

// peakOf samples f every interval until stop is closed, then sends the
// largest value it saw.
func peakOf[T cmp.Ordered](stop <-chan struct{}, every time.Duration, f func() T) <-chan T {
	out := make(chan T, 1)
	go func() {
		var peak T
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			peak = max(peak, f())
			select {
			case <-stop:
				out <- peak
				return
			case <-t.C:
			}
		}
	}()
	return out
}

// peakHeap samples the heap in use until stop is closed.
func peakHeap(stop <-chan struct{}) <-chan uint64 {
	return peakOf(stop, 20*time.Millisecond, func() uint64 {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapInuse
	})
}

// A subscriber that never reads while 1 GiB is published: the broker's
// memory stays bounded by the send queue's hard bound (not by what was
// published), the healthy subscriber gets every message, and the stalled
// one is dropped with the backpressure error.
func TestStalledSubscriberMemoryBound(t *testing.T) {
	if testing.Short() {
		t.Skip("publishes 1 GiB")
	}
	const (
		payloadSize = 64 << 10
		total       = 1 << 30
		n           = total / payloadSize
		hard        = 8 << 20
		// The bound: the stalled queue's hard bound, the healthy
		// subscriber's 20-frame window, the clients' buffers in this same
		// process, and the garbage collector's headroom (GOGC=100 doubles
		// the live heap).
		bound = 64 << 20
	)
	srv := brokertest.Start(t, testUsers(), func(c *broker.Config) {
		c.MaxPublishSize = payloadSize + 64
		c.SendQueueSoft = hard / 2
		c.SendQueueHard = hard
	})
	stalled := brokertest.Login(t, srv.Addr, "sub", "subsecret")
	stalled.SubscribeSync("sub", "chan")
	healthy := brokertest.Login(t, srv.Addr, "sub", "subsecret")
	healthy.SubscribeSync("sub", "chan")
	p := brokertest.Login(t, srv.Addr, "pub", "pubsecret")

	// It reads nothing until the broker has dropped it: within the flush
	// timeout of that, it gets the frames already on their way and the error.
	stalledDone := make(chan error, 1)
	go func() { stalledDone <- expectBackpressureError(t, srv.Broker, stalled, "sub") }()

	runtime.GC()
	stop := make(chan struct{})
	peak := peakHeap(stop)
	payload := bytes.Repeat([]byte("z"), payloadSize)
	var received atomic.Int64
	done := make(chan error, 1)
	go func() {
		healthy.Conn.SetReadDeadline(time.Now().Add(5 * time.Minute))
		for i := 0; i < n; i++ {
			f, err := healthy.R.Next()
			if err != nil {
				done <- err
				return
			}
			if f.Op != wire.OpPublish || !bytes.Equal(f.Payload, payload) {
				done <- errors.New("healthy subscriber got a wrong frame")
				return
			}
			received.Add(1)
		}
		done <- nil
	}()
	frame := brokertest.Publish(t, "pub", "chan", string(payload))
	for i := 0; i < n; i++ {
		for int64(i)-received.Load() >= 20 {
			runtime.Gosched()
		}
		p.Send(frame)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	close(stop)
	heap := <-peak
	t.Logf("published %d MiB; peak heap in use %.1f MiB (bound %d MiB)", total>>20, float64(heap)/(1<<20), bound>>20)
	if heap > bound {
		t.Errorf("peak heap %.1f MiB past the bound %d MiB", float64(heap)/(1<<20), bound>>20)
	}
	if got := srv.Broker.Snapshot().Errors[broker.ErrorKey{Ident: "sub", Category: broker.CategoryDeadlineTimerExpired}]; got != 1 {
		t.Fatalf("stalled subscriber closed %d times", got)
	}
	if err := <-stalledDone; err != nil {
		t.Fatal(err)
	}
}

// expectBackpressureError waits until the broker has dropped c for
// backpressure, then reads what was on its way, the error, and the close.
func expectBackpressureError(t *testing.T, b *broker.Broker, c *brokertest.Client, ident string) error {
	deadline := time.Now().Add(time.Minute)
	for b.Snapshot().Errors[broker.ErrorKey{Ident: ident, Category: broker.CategoryDeadlineTimerExpired}] == 0 {
		if time.Now().After(deadline) {
			return errors.New("the stalled subscriber was never dropped")
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.Conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		f, err := c.R.Next()
		if err != nil {
			return fmt.Errorf("stalled subscriber: %v before the error", err)
		}
		if f.Op == wire.OpPublish {
			continue
		}
		if f.Op != wire.OpError || string(f.Payload) != "Backpressure deadline timer expired" {
			return fmt.Errorf("stalled subscriber got %v %s", f.Op, brokertest.Short(f.Payload))
		}
		break
	}
	if _, err := c.R.Next(); !errors.Is(err, io.EOF) && !brokertest.IsReset(err) {
		return fmt.Errorf("stalled subscriber not closed after the error: %v", err)
	}
	return nil
}

func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd here: %v", err)
	}
	return len(ents)
}

// 10,000 connections opened and dropped, in waves, some authenticated and
// subscribed: afterwards the goroutines and file descriptors are back to
// what they were, and once the broker shuts down no goroutine of it is left.
func TestConnectionChurnLeaksNothing(t *testing.T) {
	// Registered first, so it runs last: after the broker has shut down.
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	fdsBefore := openFDs(t)
	srv := brokertest.Start(t, testUsers(), func(c *broker.Config) { c.AuthTimeout = 2 * time.Second })
	good := brokertest.Login(t, srv.Addr, "both", "bothsecret")
	good.SubscribeSync("both", "chan")
	baseline := runtime.NumGoroutine()
	const total, wave = 10000, 500
	for done := 0; done < total; done += wave {
		var wg sync.WaitGroup
		for i := 0; i < wave; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				nc, err := net.Dial("tcp", srv.Addr)
				if err != nil {
					t.Error(err)
					return
				}
				defer nc.Close()
				if i%3 == 0 {
					return // dropped before INFO is read
				}
				nc.SetDeadline(time.Now().Add(10 * time.Second))
				rd := wire.NewReader(nc, wire.UniformLimits(1<<16))
				info, err := rd.Next()
				if err != nil || i%3 == 1 {
					return
				}
				a, _ := wire.AppendAuth(nil, info.Payload, "both", "bothsecret")
				a, _ = wire.AppendSubscribe(a, []byte("both"), []byte("chan"))
				nc.Write(a)
			}()
		}
		wg.Wait()
		good.Send(brokertest.Publish(t, "both", "chan", "still here"))
		good.ExpectMessage("both", "chan", "still here")
	}
	brokertest.Eventually(t, "connections to drain", func() bool { return srv.Broker.Snapshot().Connections == 1 })
	// Writer goroutines of closed connections exit at once; idle ones of
	// live connections after their idle timeout.
	brokertest.Eventually(t, "goroutines back to baseline", func() bool { return runtime.NumGoroutine() <= baseline })
	good.Conn.Close()
	brokertest.Eventually(t, "file descriptors back to baseline", func() bool { return openFDs(t) <= fdsBefore+2 })
}

// stallingHandler blocks every log line whose message is msg until release
// is closed, as a log sink that has stopped (a full pipe, a stuck disk)
// does; entered is closed at the first.
type stallingHandler struct {
	slog.Handler
	msg              string
	entered, release chan struct{}
	once             *sync.Once
}

func (h stallingHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.once.Do(func() { close(h.entered) })
		<-h.release
	}
	return h.Handler.Handle(ctx, r)
}

func (h stallingHandler) WithAttrs(as []slog.Attr) slog.Handler {
	h.Handler = h.Handler.WithAttrs(as)
	return h
}

// The fan-out logs a subscriber it closes only after releasing the
// channel's lock: with a log sink that blocks, others still subscribe.
func TestFanOutLogsWithoutTheTopicLock(t *testing.T) {
	h := stallingHandler{Handler: slog.NewTextHandler(io.Discard, nil), msg: "subscriber too slow; closing it",
		entered: make(chan struct{}), release: make(chan struct{}), once: &sync.Once{}}
	srv := brokertest.Start(t, testUsers(), func(c *broker.Config) {
		c.MaxPublishSize = 64 << 10
		c.SendQueueSoft, c.SendQueueLow, c.SendQueueHard = 1<<20, 1<<18, 2<<20
		c.Logger = slog.New(h)
	})
	defer close(h.release)
	stalled := brokertest.Login(t, srv.Addr, "sub", "subsecret")
	stalled.SubscribeSync("sub", "chan")
	p := brokertest.Login(t, srv.Addr, "pub", "pubsecret")
	go func() {
		frame := brokertest.Publish(t, "pub", "chan", strings.Repeat("x", 60<<10))
		p.Conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
		for range 2000 { // 120 MB: far past socket buffers and the hard bound
			if _, err := p.Conn.Write(frame); err != nil {
				return
			}
		}
	}()
	select {
	case <-h.entered:
	case <-time.After(30 * time.Second):
		t.Fatal("the stalled subscriber was never closed")
	}
	// The publisher is stuck logging; the channel must not be.
	other := brokertest.Login(t, srv.Addr, "both", "bothsecret")
	other.SubscribeSync("both", "chan")
}
