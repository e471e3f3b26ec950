package broker

import (
	"net"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

// byteConn is a socket that always has a byte to read.
type byteConn struct{ discardConn }

func (*byteConn) Read(p []byte) (int, error)      { p[0] = 0; return 1, nil }
func (*byteConn) SetReadDeadline(time.Time) error { return nil }
func (*byteConn) LocalAddr() net.Addr             { return &net.TCPAddr{} }
func (*byteConn) SetDeadline(t time.Time) error   { return nil }

// One read of a publisher that queued to a subscriber that never drains,
// while memory is past the publishers' pause mark, is held once: MaxStall
// in all, not MaxStall for the subscriber and MaxStall again for memory.
// The shortest of a few reads is taken, so a busy machine only makes it
// longer for reads that are not the shortest.
func TestOneStallPerRead(t *testing.T) {
	b, err := New(Config{Auth: auth.Chain{}, MemoryLimit: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Shutdown(t.Context())
	c := newConn(b, &byteConn{}, ModePubSub, "test")
	c.sess.Store(newSession(auth.User{Ident: "p", PubChans: []string{"x"}}))
	c.rd = wire.NewReader(c, b.postAuth)
	c.framed = true
	c.pubs = map[string]*pubChan{"x": {t: b.topic([]byte("x"), true)}}
	b.mem.used.Add(b.mem.limit - 1) // memory is tight, and stays so
	defer b.mem.used.Add(-(b.mem.limit - 1))
	never := make(chan struct{})
	shortest := time.Hour
	for range 8 {
		c.noteStall(never)
		start := time.Now()
		if _, err := c.Read(make([]byte, 16)); err != nil {
			t.Fatal(err)
		}
		shortest = min(shortest, time.Since(start))
	}
	if shortest < MaxStall || shortest > MaxStall*3/2 {
		t.Errorf("a stalled read was held %v; the documented stall is %v in all", shortest, MaxStall)
	}
}

// Over the budget, a frame that has been arriving into its buffer for a
// while goes before a subscriber that is reading, even one that holds
// more; a subscriber whose write has been blocked as long goes before the
// partial frame when it holds more.
func TestEvictionOrder(t *testing.T) {
	b, err := New(Config{Auth: auth.Chain{}, MemoryLimit: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Shutdown(t.Context())
	mk := func() *conn {
		c := newConn(b, &byteConn{}, ModePubSub, "test")
		b.mu.Lock()
		b.conns[c] = struct{}{}
		b.mu.Unlock()
		return c
	}
	closing := func(c *conn) bool { c.q.mu.Lock(); defer c.q.mu.Unlock(); return c.q.closing }
	stale := b.clock.Load() - int64(2*stuckAfter)
	partial, reading, stuck := mk(), mk(), mk()
	partial.buffered.Store(300 << 10)
	partial.outgrownAt.Store(stale)
	reading.q.queued = 2 << 20 // its write is not blocked: it reads
	if !b.evictLargest() || !partial.evicted.Load() || closing(reading) {
		t.Fatalf("evicted the partial frame %v, closed the reading subscriber %v", partial.evicted.Load(), closing(reading))
	}
	partial.evicted.Store(false)
	stuck.q.queued = 1 << 20
	stuck.q.writingSince.Store(stale)
	b.evictLargest()
	if !closing(stuck) || closing(reading) {
		t.Errorf("closed the stuck subscriber %v, the reading one %v", closing(stuck), closing(reading))
	}
	b.mem.used.Store(0) // the fakes held nothing real
	b.mem.buffered.Store(0)
}

// A feeder (a catch-up) can push shared frames to one subscriber and wait
// for its queue to drain; a queue thrown away does not count as drained.
func TestPushSharedAndWaitDrained(t *testing.T) {
	b, err := New(Config{Auth: auth.Chain{}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Shutdown(t.Context())
	d := &discardConn{}
	c := newConn(b, d, ModePubSub, "test")
	raw, _ := wire.AppendPublish(nil, []byte("i"), []byte("c"), make([]byte, 1000))
	frame, sh := b.mem.share(raw)
	taken := 0
	for range 100 {
		if ok, _ := c.q.push(frame, 256, sh, nil); ok {
			taken++
		}
	}
	b.mem.unshare(frame, sh, taken)
	if !c.q.waitDrained(0, 10*time.Second) || c.q.queuedBytes() != 0 {
		t.Fatalf("queue not drained: %d bytes", c.q.queuedBytes())
	}
	if got, want := d.written.Load(), int64(100*len(raw)); got != want {
		t.Errorf("%d bytes written, want %d", got, want)
	}
	if u := b.mem.used.Load(); u != 0 {
		t.Errorf("%d bytes still in the budget", u)
	}
	c.q.mu.Lock()
	c.q.failLocked(BackpressureHardBound)
	c.q.mu.Unlock()
	if c.q.waitDrained(0, time.Second) {
		t.Error("a queue thrown away counted as drained")
	}
}
