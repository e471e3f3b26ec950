package broker_test

import (
	"encoding/binary"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

// Issue 23, defect 1, at the scale it was found: under a 64 MiB budget, a
// read-only ident holds 1,100 connections, each with ~600 bytes of a
// SUBSCRIBE declaring 1 MiB, trickled in, while subscribers read a busy
// channel at full speed. A SUBSCRIBE, because a read-only ident's large
// PUBLISH is refused from its head (TestLargePublishRefusedFromItsHead)
// and holds nothing. The attack holds 660 KB: the budget counts about
// that (not 64 KiB a connection, which passed the limit and had
// subscribers closed with memory-budget), and no subscriber is closed:
// each gets every message, in order.
func TestPartialFramesAtScaleSpareSubscribers(t *testing.T) {
	const (
		limit    = 64 << 20
		attack   = 1100
		held     = 600 // bytes of the frame each attacker sends
		rounds   = 6   // sent in this many pieces
		declared = 1 << 20
		subs     = 4
	)
	users := brokertest.NewUsers(
		auth.User{Ident: "pub", Secret: "s", PubChans: []string{"busy", "sync"}, SubChans: []string{"sync"}},
		auth.User{Ident: "ro", Secret: "s", SubChans: []string{"busy"}}, // read-only: subscribe only
	)
	for i := range subs {
		users.Put(auth.User{Ident: fmt.Sprint("s", i), Secret: "s", SubChans: []string{"busy", "sync"}, PubChans: []string{"sync"}})
	}
	log := &brokertest.Log{}
	srv := brokertest.Start(t, users, func(c *broker.Config) {
		c.MemoryLimit = limit
		c.Logger = log.Logger()
		// Only the budget is under test: a reader of this process
		// descheduled a while on a loaded machine is not a slow consumer.
		c.StallTimeout = time.Minute
	})

	var wg sync.WaitGroup
	errs := make([]error, subs)
	for i := range subs {
		c := subscriber(t, srv.Addr, fmt.Sprint("s", i), "busy")
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = readInOrder(c, "busy") }()
	}
	stop, sampled := make(chan struct{}), make(chan struct{})
	peakUsed := peakOf(sampled, 20*time.Millisecond, func() int64 { return srv.Broker.Snapshot().MemoryUsed })
	p := brokertest.Login(t, srv.Addr, "pub", "s")
	var sent atomic.Int64
	pubDone := make(chan error, 1)
	go func() { pubDone <- publishNumbered(p, "pub", "busy", &sent, stop) }()

	// The attack: logins first, then the frames' bytes in pieces, so
	// the broker reads them as they trickle in.
	frame := make([]byte, held)
	binary.BigEndian.PutUint32(frame, declared)
	frame[4] = byte(wire.OpSubscribe)
	frame[5] = byte(len("ro"))
	copy(frame[6:], "ro")
	copy(frame[8:], strings.Repeat("c", held-8))
	attackers := make([]net.Conn, attack)
	for i := range attackers {
		attackers[i] = brokertest.Login(t, srv.Addr, "ro", "s").Conn
		attackers[i].SetDeadline(time.Time{})
	}
	for r := range rounds {
		for _, c := range attackers {
			// A write error is a connection the broker closed: the
			// snapshot below says whom it closed.
			c.Write(frame[r*held/rounds : (r+1)*held/rounds])
		}
		time.Sleep(500 * time.Millisecond)
	}
	brokertest.Eventually(t, "every attacker's bytes read", func() error {
		st := identStats(srv.Broker, "ro")
		if st.Connections == 0 || st.ReceiveBufferSize != uint64(held*st.Connections) {
			return fmt.Errorf("%d bytes held by %d connections", st.ReceiveBufferSize, st.Connections)
		}
		return nil
	})
	// The frames are held while the channel stays busy.
	from := sent.Load()
	brokertest.Eventually(t, "1,000 more messages published", func() bool { return sent.Load() >= from+1000 })
	close(stop)
	if err := <-pubDone; err != nil {
		t.Fatalf("publisher: %v", err)
	}
	wg.Wait()
	close(sampled)
	used := <-peakUsed

	s := srv.Broker.Snapshot()
	for i, err := range errs {
		if err != nil {
			t.Errorf("subscriber s%d: %v", i, err)
		}
	}
	for k, n := range s.Backpressure {
		t.Errorf("%s closed %d times for %s", k.Ident, n, k.Reason)
	}
	// What the attack really holds is 660 KB; the queues, a few MiB at
	// most (the stall mark): a quarter of the budget is far above both
	// and far under the 64 KiB a connection counted before.
	if used > limit/4 {
		t.Errorf("the budget counted up to %.1f MiB of %d MiB", float64(used)/(1<<20), limit>>20)
	}
	t.Logf("%d messages to each of %d subscribers; budget peak %.2f MiB; attackers live %d, closed over the budget %d; %d budget warnings logged",
		sent.Load(), subs, float64(used)/(1<<20), identStats(srv.Broker, "ro").Connections, s.PartialCloses,
		log.Count("memory budget"))
}

// publishNumbered publishes 8 KiB messages numbered from 0 to channel at
// about 5 MB/s until stop is closed, counting them in sent, then one
// saying how many there were.
func publishNumbered(p *brokertest.Client, ident, channel string, sent *atomic.Int64, stop <-chan struct{}) error {
	const (
		size = 8 << 10
		rate = 600 // messages a second
		most = 64  // a batch, after the machine held this goroutine up
	)
	payload := []byte(strings.Repeat("x", size))
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	var batch []byte
	for n := 0; ; {
		select {
		case <-stop:
			end, err := wire.AppendPublish(nil, []byte(ident), []byte(channel), fmt.Appendf(nil, "end %d", n))
			if err == nil {
				_, err = p.Conn.Write(end)
			}
			return err
		case <-tick.C:
		}
		batch = batch[:0]
		for due := min(int(time.Since(start).Seconds()*rate), n+most); n < due; n++ {
			copy(payload, fmt.Sprintf("%08d", n))
			var err error
			if batch, err = wire.AppendPublish(batch, []byte(ident), []byte(channel), payload); err != nil {
				return err
			}
		}
		p.Conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
		if _, err := p.Conn.Write(batch); err != nil {
			return fmt.Errorf("after %d messages: %w", sent.Load(), err)
		}
		sent.Store(int64(n))
	}
}

// readInOrder reads channel's messages, numbered from 0, until the one
// saying how many there were, and reports the first one missing or out
// of order, or why the stream ended.
func readInOrder(c *brokertest.Client, channel string) error {
	for n := 0; ; {
		c.Conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		f, err := c.R.Next()
		switch {
		case err != nil:
			return fmt.Errorf("after %d messages: %w", n, err)
		case f.Op == wire.OpError:
			return fmt.Errorf("after %d messages: ERROR %q", n, f.Payload)
		case f.Op != wire.OpPublish || string(f.Channel) != channel:
			continue
		}
		if total, ok := strings.CutPrefix(string(f.Payload), "end "); ok {
			if total != strconv.Itoa(n) {
				return fmt.Errorf("got %d of %s messages", n, total)
			}
			return nil
		}
		if len(f.Payload) < 8 || string(f.Payload[:8]) != fmt.Sprintf("%08d", n) {
			return fmt.Errorf("message %d is %s", n, brokertest.Short(f.Payload))
		}
		n++
	}
}
