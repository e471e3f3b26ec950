// Command nullrelay is the floor of bench/run.sh: the least an hpfeeds
// relay can do. It sends INFO, accepts any AUTH, tracks SUBSCRIBE and
// UNSUBSCRIBE, and copies each PUBLISH frame, as received, to its
// channel's subscribers. No checks, no limits, no metrics, no logging.
//
// It moves bytes the way the broker does, so that the broker's CPU per
// delivery divided by the relay's measures what the broker's own work
// costs: one reader goroutine per connection batching reads (the wire
// package's Reader); a frame copied into each subscriber's pooled 64 KiB
// chunks while that copies at most 8 KiB in all (as nats-server copies
// into each client's buffer), else copied once and shared (a large one in
// a pooled buffer), whichever measured cheaper; per subscriber a writer
// goroutine that sends everything queued since its last write in one
// writev, small shared frames copied together, woken once per read batch. A subscriber with 4 MiB queued blocks its
// publishers' readers until its writer takes the queue: TCP backpressure.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"

	"github.com/hpfeeds-go/hpfeeds/wire"
)

const (
	stallBytes = 4 << 20  // queued bytes past which publishers wait
	chunkSize  = 64 << 10 // a subscriber's chunks, and a writer's scratch
	copyMax    = 4 << 10  // shared frames up to this size are copied to write
	// A frame is copied to each subscriber while this covers all copies.
	eachMax = 8 << 10
)

var chunks = sync.Pool{New: func() any { b := make([]byte, 0, chunkSize); return &b }}

// large is a shared frame over copyMax, returned to its pool by the last
// writer to send it.
type large struct {
	b    []byte
	refs atomic.Int32
}

var larges sync.Pool

func newLarge(frame []byte, refs int) *large {
	l, _ := larges.Get().(*large)
	if l == nil {
		l = &large{}
	}
	l.b = append(l.b[:0], frame...)
	l.refs.Store(int32(refs))
	return l
}

func (l *large) release() {
	if l.refs.Add(-1) == 0 {
		larges.Put(l)
	}
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen `host:port`")
	flag.Parse()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "nullrelay:", err)
		os.Exit(2)
	}
	fmt.Println(ln.Addr())
	r := &relay{subs: map[string][]*conn{}}
	for {
		nc, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "nullrelay:", err)
			os.Exit(2)
		}
		go r.serve(nc)
	}
}

// relay maps channels to their subscribers; a slice is replaced, never
// changed in place, so a publisher may range over the one it got.
type relay struct {
	mu   sync.RWMutex
	subs map[string][]*conn
}

// seg is a queued run of bytes: a chunk of this subscriber's (returned to
// the pool once written), a small shared frame, or a large one.
type seg struct {
	chunk *[]byte
	small []byte
	large *large
}

func (s seg) bytes() []byte {
	switch {
	case s.chunk != nil:
		return *s.chunk
	case s.large != nil:
		return s.large.b
	}
	return s.small
}

// conn is one client: its queue and its writer's wake-up.
type conn struct {
	nc      net.Conn
	mu      sync.Mutex
	drained *sync.Cond // signalled when the writer took the queue
	queue   []seg
	queued  int
	closed  bool
	wake    chan struct{}
}

func (r *relay) serve(nc net.Conn) {
	c := &conn{nc: nc, wake: make(chan struct{}, 1)}
	c.drained = sync.NewCond(&c.mu)
	info, _ := wire.AppendInfo(nil, "nullrelay", [wire.NonceLen]byte{})
	if _, err := nc.Write(info); err != nil {
		nc.Close()
		return
	}
	go c.write()
	rd := wire.NewReader(nc, wire.UniformLimits(wire.MaxFrameLen))
	var touched []*conn
	var channels []string
	var f wire.Frame
	for {
		if err := rd.NextInto(&f); err != nil {
			break
		}
		switch f.Op {
		case wire.OpSubscribe:
			channels = append(channels, string(f.Channel))
			r.follow(string(f.Channel), c, true)
		case wire.OpUnsubscribe:
			r.follow(string(f.Channel), c, false)
		case wire.OpPublish:
			touched = r.publish(&f, touched)
		}
		if !rd.Ready() { // the next NextInto reads: send now
			for _, s := range touched {
				s.signal()
			}
			touched = touched[:0]
		}
	}
	for _, ch := range channels {
		r.follow(ch, c, false)
	}
	c.mu.Lock()
	c.closed = true
	c.drained.Broadcast()
	c.mu.Unlock()
	c.signal()
	nc.Close()
}

// publish queues f to every subscriber of its channel and returns touched
// with those it queued to, whose writers are to be woken.
func (r *relay) publish(f *wire.Frame, touched []*conn) []*conn {
	r.mu.RLock()
	subs := r.subs[string(f.Channel)]
	r.mu.RUnlock()
	var shared seg
	switch {
	case len(subs) < 2 || len(f.Raw)*len(subs) <= eachMax:
	case len(f.Raw) > copyMax:
		shared.large = newLarge(f.Raw, len(subs))
	default:
		shared.small = append([]byte(nil), f.Raw...)
	}
	for _, s := range subs {
		s.mu.Lock()
		for s.queued >= stallBytes && !s.closed {
			s.signal()
			s.drained.Wait()
		}
		s.queued += len(f.Raw)
		if shared.small != nil || shared.large != nil {
			s.queue = append(s.queue, shared)
		} else {
			s.appendOwned(f.Raw)
		}
		s.mu.Unlock()
		touched = append(touched, s)
	}
	return touched
}

// appendOwned copies frame into the subscriber's last chunk, or new ones.
func (c *conn) appendOwned(frame []byte) {
	for len(frame) > 0 {
		n := len(c.queue)
		if n == 0 || c.queue[n-1].chunk == nil || len(*c.queue[n-1].chunk) == chunkSize {
			c.queue = append(c.queue, seg{chunk: chunks.Get().(*[]byte)})
			n++
		}
		b := c.queue[n-1].chunk
		k := min(len(frame), chunkSize-len(*b))
		*b = append(*b, frame[:k]...)
		frame = frame[k:]
	}
}

func (r *relay) follow(channel string, c *conn, on bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.subs[channel]
	subs := make([]*conn, 0, len(old)+1)
	for _, s := range old {
		if s != c {
			subs = append(subs, s)
		}
	}
	if on {
		subs = append(subs, c)
	}
	r.subs[channel] = subs
}

func (c *conn) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// write sends the queue whenever woken, swapping it with a spare so
// publishers queue while it writes; it ends once the connection closed.
func (c *conn) write() {
	var w writer
	var spare []seg
	for range c.wake {
		c.mu.Lock()
		spare, c.queue = c.queue, spare[:0]
		c.queued = 0
		closed := c.closed
		c.drained.Broadcast()
		c.mu.Unlock()
		if err := w.send(c.nc, spare); err != nil {
			c.nc.Close()
		}
		for i, s := range spare {
			if s.chunk != nil {
				*s.chunk = (*s.chunk)[:0]
				chunks.Put(s.chunk)
			} else if s.large != nil {
				s.large.release()
			}
			spare[i] = seg{}
		}
		if closed {
			return
		}
	}
}

// writer turns a queue into writev calls: chunks and large shared frames
// as their own iovecs, small shared frames copied together into scratch.
type writer struct {
	scratch []byte
	iov     [][]byte
}

func (w *writer) send(nc net.Conn, q []seg) error {
	if w.scratch == nil {
		w.scratch = make([]byte, 0, chunkSize)
	}
	scratch, mark := w.scratch[:0], 0
	iov := w.iov[:0]
	for _, s := range q {
		b := s.bytes()
		if s.small != nil {
			if len(scratch)+len(b) > cap(scratch) {
				if err := writev(nc, append(iov, scratch[mark:])); err != nil {
					return err
				}
				scratch, mark, iov = scratch[:0], 0, iov[:0]
			}
			scratch = append(scratch, b...)
			continue
		}
		if len(scratch) > mark {
			iov = append(iov, scratch[mark:])
			mark = len(scratch)
		}
		iov = append(iov, b)
	}
	if len(scratch) > mark {
		iov = append(iov, scratch[mark:])
	}
	w.iov = iov
	err := writev(nc, iov)
	clear(iov) // don't pin shared frames
	return err
}

func writev(nc net.Conn, iov [][]byte) error {
	if len(iov) == 0 {
		return nil
	}
	bufs := net.Buffers(iov)
	_, err := bufs.WriteTo(nc)
	return err
}
