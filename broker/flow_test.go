package broker_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

// flowUsers has, for each channel name, a publisher "p"+name and two
// subscribers "s"+name and "t"+name; every ident may also use "sync".
func flowUsers(channels ...string) *brokertest.Users {
	users := brokertest.NewUsers()
	for _, ch := range channels {
		users.Put(auth.User{Ident: "p" + ch, Secret: "s", PubChans: []string{ch, "sync"}, SubChans: []string{"sync"}})
		for _, s := range []string{"s", "t"} {
			users.Put(auth.User{Ident: s + ch, Secret: "s", SubChans: []string{ch, "sync"}, PubChans: []string{"sync"}})
		}
	}
	return users
}

// stalledSub subscribes ident to channel with a tiny receive buffer and
// then reads nothing (until the test does): the broker's queue to it
// fills after a few kilobytes in the kernel.
func stalledSub(t *testing.T, addr, ident, channel string) *brokertest.Client {
	t.Helper()
	small := func(_, _ string, rc syscall.RawConn) error {
		var err error
		rc.Control(func(fd uintptr) { err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return err
	}
	c := brokertest.DialWith(t, addr, &net.Dialer{Control: small})
	c.Send(c.Auth(ident, "s"), brokertest.Subscribe(t, ident, channel))
	c.Sync(ident)
	return c
}

func subscriber(t *testing.T, addr, ident, channel string) *brokertest.Client {
	t.Helper()
	c := brokertest.Login(t, addr, ident, "s")
	c.SubscribeSync(ident, channel)
	return c
}

// readAll reads n messages of channel and reports the longest wait
// between two of them.
func readAll(c *brokertest.Client, n int, channel string) (time.Duration, error) {
	var gap time.Duration
	last := time.Now()
	c.Conn.SetReadDeadline(time.Now().Add(time.Minute))
	for i := 0; i < n; {
		f, err := c.R.Next()
		if err != nil {
			return gap, fmt.Errorf("after %d of %d messages: %w", i, n, err)
		}
		if f.Op == wire.OpPublish && string(f.Channel) == channel {
			gap = max(gap, time.Since(last))
			last = time.Now()
			i++
		}
	}
	return gap, nil
}

func identStats(b *broker.Broker, ident string) broker.IdentStats {
	if st := b.Snapshot().Idents[ident]; st != nil {
		return *st
	}
	return broker.IdentStats{}
}

// A subscriber that stops reading pauses the publisher into it, briefly:
// a healthy subscriber of the same channel still gets every message with
// no long gap (the publisher is never held for long), the stalled one gets
// every message once it reads again, and a publisher on another channel
// is never paused at all.
func TestFlowControl(t *testing.T) {
	srv := brokertest.Start(t, flowUsers("a", "b"), func(c *broker.Config) {
		c.StallMark = 512 << 10
		c.SendQueueSoft, c.SendQueueHard = 32<<20, 64<<20
		c.StallTimeout = time.Minute // it comes back to read: the stall alone is tested
	})
	slow := stalledSub(t, srv.Addr, "sa", "a")
	healthy := subscriber(t, srv.Addr, "ta", "a")
	other := subscriber(t, srv.Addr, "sb", "b")
	pa, pb := brokertest.Login(t, srv.Addr, "pa", "s"), brokertest.Login(t, srv.Addr, "pb", "s")

	const n = 256 // 16 MiB: well past the kernel's socket buffers
	frameA := brokertest.Publish(t, "pa", "a", strings.Repeat("a", 64<<10))
	// B's queue can never reach the stall mark: any pause of its
	// publisher would come from channel A.
	frameB := brokertest.Publish(t, "pb", "b", strings.Repeat("b", 1<<10))
	var wg sync.WaitGroup
	for _, w := range []struct {
		c     *brokertest.Client
		frame []byte
	}{{pa, frameA}, {pb, frameB}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range n {
				if _, err := w.c.Conn.Write(w.frame); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	otherDone := make(chan error, 1)
	go func() { _, err := readAll(other, n, "b"); otherDone <- err }()
	gap, err := readAll(healthy, n, "a")
	if err != nil {
		t.Fatal(err)
	}
	if err := <-otherDone; err != nil {
		t.Fatal(err)
	}
	// The bound is MaxStall per read; a second allows for a busy machine.
	if gap > time.Second {
		t.Errorf("healthy subscriber of the stalled channel waited %v for a message", gap)
	}
	pauses := identStats(srv.Broker, "pa").FlowPauses
	if pauses == 0 {
		t.Error("the publisher into a stalled subscriber was never paused")
	}
	if p := identStats(srv.Broker, "pb").FlowPauses; p != 0 {
		t.Errorf("the publisher on another channel was paused %d times", p)
	}
	if _, err := readAll(slow, n, "a"); err != nil {
		t.Fatalf("stalled subscriber, once reading: %v", err)
	}
	wg.Wait()
	pa.Sync("pa")
	pauses = identStats(srv.Broker, "pa").FlowPauses
	// Drained: publishing goes on without pauses.
	for range 20 {
		pa.Send(brokertest.Publish(t, "pa", "a", "small"))
	}
	pa.Sync("pa")
	if p := identStats(srv.Broker, "pa").FlowPauses; p != pauses {
		t.Errorf("%d more pauses after the subscriber caught up", p-pauses)
	}
	t.Logf("publisher paused %d times; longest gap at the healthy subscriber %v", pauses, gap)
}

// Over the memory budget, the subscriber holding the most queued bytes is
// closed first (with the backpressure error), and one holding fewer keeps
// everything it was sent.
func TestMemoryBudgetClosesLargestQueueFirst(t *testing.T) {
	const limit = 8 << 20
	srv := brokertest.Start(t, flowUsers("a", "b"), func(c *broker.Config) {
		c.MemoryLimit = limit
		c.MaxPublishSize = 128 << 10
		c.StallTimeout = -1 // only the budget closes them
	})
	big := stalledSub(t, srv.Addr, "sa", "a")
	small := stalledSub(t, srv.Addr, "sb", "b")
	pa, pb := brokertest.Login(t, srv.Addr, "pa", "s"), brokertest.Login(t, srv.Addr, "pb", "s")
	frameB := brokertest.Publish(t, "pb", "b", strings.Repeat("b", 64<<10))
	const nb = 24 // 1.5 MiB
	for range nb {
		pb.Send(frameB)
	}
	pb.Sync("pb")
	frameA := brokertest.Publish(t, "pa", "a", strings.Repeat("a", 64<<10))
	go func() {
		for range 1024 { // 64 MiB: far over the budget
			if _, err := pa.Conn.Write(frameA); err != nil {
				return
			}
		}
	}()
	if err := expectBackpressureError(t, srv.Broker, big, "sa"); err != nil {
		t.Fatal(err)
	}
	s := srv.Broker.Snapshot()
	if got := s.Backpressure[broker.BackpressureKey{Ident: "sa", Reason: broker.BackpressureMemoryBudget}]; got != 1 {
		t.Errorf("largest queue closed %d times for the memory budget (%v)", got, s.Backpressure)
	}
	if s.Errors[broker.ErrorKey{Ident: "sb", Category: broker.CategoryDeadlineTimerExpired}] != 0 {
		t.Error("the smaller queue was closed too")
	}
	if _, err := readAll(small, nb, "b"); err != nil {
		t.Fatalf("the subscriber with fewer bytes queued: %v", err)
	}
}

// Eight subscribers that never read, on eight channels with a fast
// publisher each: the broker's heap stays within the memory budget (plus
// the garbage collector's headroom), whatever the send queue bounds say,
// and a healthy subscriber on a ninth channel loses nothing.
func TestEightStalledSubscribersWithinBudget(t *testing.T) {
	const (
		limit = 16 << 20
		// The GC's headroom (GOGC=100 doubles the live heap; the
		// command sets a soft memory limit, this test does not) and the
		// clients in this process; without the budget, the stalled
		// queues alone would hold 128 MiB.
		bound = 6 * limit
		each  = 256 // 64 KiB frames: 16 MiB per publisher
	)
	chans := []string{"c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "h"}
	srv := brokertest.Start(t, flowUsers(chans...), func(c *broker.Config) {
		c.MemoryLimit = limit
		c.BackpressureDeadline = time.Hour // only the budget bounds them
		c.StallTimeout = -1
	})
	var clients []*brokertest.Client
	for _, ch := range chans[:8] {
		clients = append(clients, stalledSub(t, srv.Addr, "s"+ch, ch))
	}
	healthy := subscriber(t, srv.Addr, "sh", "h")
	clients = append(clients, healthy)
	runtime.GC()
	stop := make(chan struct{})
	peak, peakUsed := peakHeap(stop), peakBudget(srv.Broker, stop)
	var wg sync.WaitGroup
	for _, ch := range chans {
		p := brokertest.Login(t, srv.Addr, "p"+ch, "s")
		clients = append(clients, p)
		frame := brokertest.Publish(t, "p"+ch, ch, strings.Repeat("x", 64<<10))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				if _, err := p.Conn.Write(frame); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	if _, err := readAll(healthy, each, "h"); err != nil {
		t.Fatalf("healthy subscriber: %v", err)
	}
	wg.Wait()
	close(stop)
	heap, used := <-peak, <-peakUsed
	t.Logf("peak heap in use %.1f MiB; budget %d MiB, at most %.1f MiB in it; closes %v",
		float64(heap)/(1<<20), limit>>20, float64(used)/(1<<20), srv.Broker.Snapshot().Backpressure)
	if heap > bound {
		t.Errorf("peak heap %.1f MiB past %d MiB", float64(heap)/(1<<20), bound>>20)
	}
	// Publishers push between two passes of the enforcer: a few frames each.
	if used > limit+limit/2 {
		t.Errorf("%.1f MiB in the budget of %d MiB", float64(used)/(1<<20), limit>>20)
	}
	// Every byte counted is let go once the connections are gone.
	for _, c := range clients {
		c.Conn.Close()
	}
	brokertest.Eventually(t, "the budget to be empty", func() bool {
		s := srv.Broker.Snapshot()
		return s.Connections == 0 && s.MemoryUsed == 0
	})
}

// peakBudget samples the bytes in the broker's memory budget until stop is
// closed.
func peakBudget(b *broker.Broker, stop <-chan struct{}) <-chan int64 {
	return peakOf(stop, 5*time.Millisecond, func() int64 { return b.Snapshot().MemoryUsed })
}

// Many connections each hold most of a large PUBLISH and wait: the broker
// buffers only what arrived, stops reading them near the budget, keeps
// serving others, and closes them when the frame deadline passes.
func TestPartialFramesWithinBudget(t *testing.T) {
	const (
		limit = 24 << 20
		conns = 48
		body  = 2 << 20 // of a declared 10 MiB: 96 MiB held in all if read
		bound = 3 * limit
	)
	srv := brokertest.Start(t, flowUsers("a", "b"), func(c *broker.Config) {
		c.MemoryLimit = limit
		c.MaxPublishSize = 10 << 20
		c.FrameTimeout = 2 * time.Second
	})
	healthy := subscriber(t, srv.Addr, "sb", "b")
	pb := brokertest.Login(t, srv.Addr, "pb", "s")
	frame := brokertest.Publish(t, "pa", "a", strings.Repeat("x", 10<<20-16))
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(broker.RuntimeMemoryLimit(limit)))
	runtime.GC()
	stop := make(chan struct{})
	peak, peakUsed := peakHeap(stop), peakBudget(srv.Broker, stop)
	var wg sync.WaitGroup
	for range conns {
		c := brokertest.Login(t, srv.Addr, "pa", "s")
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.Conn.SetWriteDeadline(time.Now().Add(time.Minute))
			c.Conn.Write(frame[:body]) // blocks once the broker stops reading
		}()
	}
	// Others are served meanwhile.
	for i := range 100 {
		pb.Send(brokertest.Publish(t, "pb", "b", fmt.Sprint("m", i)))
	}
	if _, err := readAll(healthy, 100, "b"); err != nil {
		t.Fatalf("healthy subscriber: %v", err)
	}
	brokertest.Eventually(t, "every partial frame to be closed", func() bool { return srv.Broker.Snapshot().Connections == 2 })
	s := srv.Broker.Snapshot()
	t.Logf("closed: %d over the budget, %d at the frame deadline", s.PartialCloses, s.FrameTimeouts)
	if s.FrameTimeouts+s.PartialCloses != conns {
		t.Errorf("%d + %d closes counted for %d connections", s.PartialCloses, s.FrameTimeouts, conns)
	}
	wg.Wait()
	close(stop)
	heap, used := <-peak, <-peakUsed
	t.Logf("peak heap in use %.1f MiB; budget %d MiB, at most %.1f MiB in it", float64(heap)/(1<<20), limit>>20, float64(used)/(1<<20))
	if heap > bound {
		t.Errorf("peak heap %.1f MiB past %d MiB", float64(heap)/(1<<20), bound>>20)
	}
	pb.Conn.Close()
	healthy.Conn.Close()
	brokertest.Eventually(t, "the budget to be empty", func() bool {
		s := srv.Broker.Snapshot()
		return s.Connections == 0 && s.MemoryUsed == 0
	})
}

// A large PUBLISH to a channel the ident may not publish to is refused as
// soon as its ident and channel are in, before its body is sent.
func TestLargePublishRefusedFromItsHead(t *testing.T) {
	srv := brokertest.Start(t, flowUsers("a", "b"), func(c *broker.Config) { c.MaxPublishSize = 10 << 20 })
	for _, tc := range []struct{ ident, channel, want string }{
		{"pa", "b", wire.NotAllowed(wire.ErrNoPublishPrefix, "pa", "b")},
		{"pb", "b", wire.IdentMismatch("pb")},
	} {
		c := brokertest.Login(t, srv.Addr, "pa", "s")
		head := binary.BigEndian.AppendUint32(nil, uint32(wire.HeaderLen+2+len(tc.ident)+len(tc.channel)+8<<20))
		head = append(head, byte(wire.OpPublish), byte(len(tc.ident)))
		head = append(append(head, tc.ident...), byte(len(tc.channel)))
		head = append(head, tc.channel...)
		c.Send(append(head, bytes.Repeat([]byte("x"), 100<<10)...))
		c.ExpectError(tc.want)
	}
}

// The frame deadline covers a frame in progress only: a connection that
// completed its frames and then stays idle far longer is not closed.
func TestFrameTimeoutSparesIdleConnections(t *testing.T) {
	srv := brokertest.Start(t, flowUsers("a"), func(c *broker.Config) { c.FrameTimeout = 200 * time.Millisecond })
	s := subscriber(t, srv.Addr, "sa", "a")
	p := brokertest.Login(t, srv.Addr, "pa", "s")
	frame := brokertest.Publish(t, "pa", "a", "split")
	p.Send(frame[:7]) // a frame in progress arms the deadline
	time.Sleep(50 * time.Millisecond)
	p.Send(frame[7:])
	s.ExpectMessage("pa", "a", "split")
	time.Sleep(600 * time.Millisecond) // idle, past the deadline armed above
	p.Send(brokertest.Publish(t, "pa", "a", "still here"))
	s.ExpectMessage("pa", "a", "still here")
	if n := srv.Broker.Snapshot().FrameTimeouts; n != 0 {
		t.Errorf("%d connections closed for the frame timeout", n)
	}
}
