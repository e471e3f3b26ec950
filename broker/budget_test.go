package broker_test

import (
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

// One 1 MiB PUBLISH shared by eight subscribers that all read is one copy
// in the budget, not eight: with an 8 MiB budget none of them is closed,
// and each gets every message. Counted once, the four frames (1.13 MiB
// each in their buffers) and a fifth buffer for a frame being read stay
// under 6 MiB however slowly the subscribers read; eight copies of the
// first frame alone would be over 9 MiB. (With 4 MiB the four frames did
// not fit, and a subscriber slower than the publisher's 5 ms pause, as
// under the race detector in CI, was closed: 2 runs in 30.)
func TestSharedFrameCountedOnce(t *testing.T) {
	users := brokertest.NewUsers(auth.User{Ident: "p", Secret: "s", PubChans: []string{"a", "sync"}, SubChans: []string{"sync"}})
	for i := range 8 {
		users.Put(auth.User{Ident: fmt.Sprint("s", i), Secret: "s", SubChans: []string{"a", "sync"}, PubChans: []string{"sync"}})
	}
	srv := brokertest.Start(t, users, func(c *broker.Config) { c.MemoryLimit = 8 << 20 })
	const n = 4
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		s := subscriber(t, srv.Addr, fmt.Sprint("s", i), "a")
		wg.Add(1)
		go func() { defer wg.Done(); _, err := readAll(s, n, "a"); errs <- err }()
	}
	p := brokertest.Login(t, srv.Addr, "p", "s")
	frame := brokertest.Publish(t, "p", "a", strings.Repeat("x", broker.DefaultMaxPublishSize-8))
	for range n {
		p.Send(frame)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("a reading subscriber: %v (closes %v)", err, srv.Broker.Snapshot().Backpressure)
		}
	}
}

// Partial frames cost what their bytes do: 80 connections that each sent
// only the 5-byte header of a 64 KiB SUBSCRIBE hold a few hundred bytes
// each, so a 4 MiB budget is not exceeded by them, and a subscriber with
// 1 MiB queued is not closed for it.
func TestHeaderHoldersDoNotCloseSubscribers(t *testing.T) {
	srv := brokertest.Start(t, flowUsers("a", "b"), func(c *broker.Config) {
		c.MemoryLimit = 4 << 20
		c.StallTimeout = time.Minute // the subscriber comes back to read
	})
	sub := stalledSub(t, srv.Addr, "sa", "a")
	pa := brokertest.Login(t, srv.Addr, "pa", "s")
	const n = 16 // 1 MiB queued
	for range n {
		pa.Send(brokertest.Publish(t, "pa", "a", strings.Repeat("a", 64<<10)))
	}
	pa.Sync("pa")
	head := make([]byte, wire.HeaderLen)
	binary.BigEndian.PutUint32(head, 64<<10)
	head[4] = byte(wire.OpSubscribe)
	for range 80 {
		c := brokertest.Login(t, srv.Addr, "tb", "s")
		c.Send(head)
	}
	time.Sleep(300 * time.Millisecond) // for the broker to read the headers
	s := srv.Broker.Snapshot()
	if s.MemoryUsed > 2<<20 {
		t.Errorf("80 headers and 1 MiB queued count %d bytes in the budget", s.MemoryUsed)
	}
	if _, err := readAll(sub, n, "a"); err != nil {
		t.Fatalf("the subscriber: %v (closes %v)", err, srv.Broker.Snapshot().Backpressure)
	}
}

// A session revoked while its client has stopped reading (its writer is
// still flushing) publishes nothing more: the close stops the reader too.
func TestRevokedSessionPublishesNothingMore(t *testing.T) {
	users := brokertest.NewUsers(
		auth.User{Ident: "rev", Secret: "s", PubChans: []string{"a"}, SubChans: []string{"busy", "sync"}},
		auth.User{Ident: "watch", Secret: "s", SubChans: []string{"a", "sync"}, PubChans: []string{"sync"}},
		auth.User{Ident: "flood", Secret: "s", PubChans: []string{"busy", "sync"}, SubChans: []string{"sync"}},
	)
	log := &brokertest.Log{}
	srv := brokertest.Start(t, users, func(c *broker.Config) {
		c.RevalidateEvery = 20 * time.Millisecond
		c.FlushTimeout = time.Second
		c.StallMark = 16 << 20 // the flood is not held up
		c.Logger = log.Logger()
	})
	small := func(_, _ string, rc syscall.RawConn) error {
		var err error
		rc.Control(func(fd uintptr) { err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return err
	}
	rev := brokertest.DialWith(t, srv.Addr, &net.Dialer{Control: small})
	rev.Send(rev.Auth("rev", "s"), brokertest.Subscribe(t, "rev", "busy"))
	watch := subscriber(t, srv.Addr, "watch", "a")
	flood := brokertest.Login(t, srv.Addr, "flood", "s")
	for range 128 { // 8 MiB: more than the socket buffers take
		flood.Send(brokertest.Publish(t, "flood", "busy", strings.Repeat("b", 64<<10)))
	}
	flood.Sync("flood")
	users.Delete("rev")
	brokertest.Eventually(t, "the revocation", func() bool { return log.Count("session closed: user removed") == 1 })
	for i := range 20 {
		// A reset only shows the broker read nothing more.
		rev.Conn.Write(brokertest.Publish(t, "rev", "a", fmt.Sprint("after revocation ", i)))
	}
	watch.Conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	for {
		f, err := watch.R.Next()
		if err != nil {
			break
		}
		if !brokertest.IsSync(f) {
			t.Fatalf("a revoked session's PUBLISH was delivered: %v %s", f.Op, f.Payload)
		}
	}
}

// Many kinds of clients at once, at random: fan-out and fan-in publishers,
// large frames, subscribers that read, read slowly or never, partial
// frames left hanging, and clients that come and go. The budget never goes
// negative; with the publishers stopped and the readers drained, it holds
// only the reader buffers its connections count; and it is back to zero
// once every client has left.
func TestBudgetInvariants(t *testing.T) {
	chans := []string{"f", "i", "l"}
	srv := brokertest.Start(t, flowUsers(chans...), func(c *broker.Config) {
		c.MemoryLimit = 8 << 20
		c.StallMark = 1 << 20
		c.StallTimeout = 200 * time.Millisecond
		c.FrameTimeout = time.Second
	})
	bufs := broker.BufsInUse() // what queues of earlier tests still hold
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 23))
	stop := make(chan struct{})
	var bad atomic.Value
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
			if used, buffered, releasing, _ := broker.BudgetParts(srv.Broker); used < 0 || buffered < 0 || releasing < 0 {
				bad.Store(fmt.Sprintf("used %d, buffered %d, releasing %d", used, buffered, releasing))
			}
		}
	}()
	var readers, writers sync.WaitGroup
	var clients []*brokertest.Client
	for range 4 { // readers of every channel
		for _, ch := range chans {
			c := subscriber(t, srv.Addr, "s"+ch, ch)
			clients = append(clients, c)
			readers.Add(1)
			go func() { defer readers.Done(); io.Copy(io.Discard, c.Conn) }()
		}
	}
	for _, ch := range chans { // a subscriber that never reads, and a slow one
		clients = append(clients, stalledSub(t, srv.Addr, "t"+ch, ch))
		c := subscriber(t, srv.Addr, "t"+ch, ch)
		clients = append(clients, c)
		go io.Copy(io.Discard, &paced{r: c.Conn, rate: 100_000, start: time.Now()})
	}
	deadline := time.Now().Add(2 * time.Second)
	for w := range 8 {
		ch := chans[w%len(chans)]
		size := []int{1 << 10, 1 << 10, 200 << 10}[w%len(chans)]
		seed := rng.Uint64()
		writers.Add(1)
		go func() {
			defer writers.Done()
			r := rand.New(rand.NewPCG(seed, 1))
			frame := brokertest.Publish(t, "p"+ch, ch, strings.Repeat("x", size))
			for time.Now().Before(deadline) {
				c := brokertest.Login(t, srv.Addr, "p"+ch, "s")
				c.Conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
				for n := r.IntN(200); n > 0; n-- {
					if _, err := c.Conn.Write(frame); err != nil {
						break
					}
				}
				if r.IntN(3) == 0 { // leave a frame half sent
					c.Conn.Write(frame[:len(frame)/2])
					time.Sleep(time.Duration(r.IntN(50)) * time.Millisecond)
				}
				c.Conn.Close()
			}
		}()
	}
	writers.Wait()
	// Every publisher is gone: only stalled queues and the readers' own
	// buffers may hold anything, and the stalled ones are closed within
	// the stall timeout.
	brokertest.Eventually(t, "the budget to hold only reader buffers", func() error {
		used, buffered, _, conns := broker.BudgetParts(srv.Broker)
		if used != buffered || buffered != conns {
			return fmt.Errorf("used %d, buffered %d, connections' buffers %d", used, buffered, conns)
		}
		return nil
	})
	for _, c := range clients {
		c.Conn.Close()
	}
	readers.Wait()
	brokertest.Eventually(t, "the budget to be empty", func() error {
		if s := srv.Broker.Snapshot(); s.Connections != 0 {
			return fmt.Errorf("%d connections", s.Connections)
		}
		if used, buffered, releasing, _ := broker.BudgetParts(srv.Broker); used != 0 || buffered != 0 || releasing != 0 {
			return fmt.Errorf("used %d, buffered %d, releasing %d", used, buffered, releasing)
		}
		if n := broker.BufsInUse() - bufs; n > 0 {
			return fmt.Errorf("%d bytes of mapped frame buffers still in use", n)
		}
		return nil
	})
	close(stop)
	<-sampled
	if v := bad.Load(); v != nil {
		t.Errorf("the budget went negative: %s", v)
	}
	t.Logf("closes %v; partial closes %d, frame timeouts %d", srv.Broker.Snapshot().Backpressure,
		srv.Broker.Snapshot().PartialCloses, srv.Broker.Snapshot().FrameTimeouts)
}
