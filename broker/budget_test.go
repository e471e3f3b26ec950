package broker_test

import (
	"encoding/binary"
	"fmt"
	"net"
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

// One 1 MiB PUBLISH shared by eight subscribers that all read is one copy
// in the budget, not eight: with a 4 MiB budget none of them is closed,
// and each gets every message.
func TestSharedFrameCountedOnce(t *testing.T) {
	users := brokertest.NewUsers(auth.User{Ident: "p", Secret: "s", PubChans: []string{"a", "sync"}, SubChans: []string{"sync"}})
	for i := range 8 {
		users.Put(auth.User{Ident: fmt.Sprint("s", i), Secret: "s", SubChans: []string{"a", "sync"}, PubChans: []string{"sync"}})
	}
	srv := brokertest.Start(t, users, func(c *broker.Config) { c.MemoryLimit = 4 << 20 })
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
