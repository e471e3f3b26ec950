// Command nullrelay is the floor of bench/run.sh: the least an hpfeeds
// relay can do. It sends INFO, accepts any AUTH, tracks SUBSCRIBE and
// UNSUBSCRIBE, and copies each PUBLISH frame, as received, to its
// channel's subscribers. No checks, no limits, no metrics, no logging.
// It is written plainly but not naively, so that the broker's CPU per
// delivery divided by the relay's measures what the broker's own work
// costs: one reader goroutine per connection batching reads (the wire
// package's Reader), and a writer goroutine per subscriber that sends
// everything queued since its last write in one syscall, woken once per
// read batch as the broker does. A subscriber holding 4 MiB unsent blocks
// the publisher's reader until it drains: plain TCP backpressure.
package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"net"
	"os"
	"sync"

	"github.com/hpfeeds-go/hpfeeds/wire"
)

// stallBytes is what a subscriber may hold unsent before its publishers wait.
const stallBytes = 4 << 20

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

// conn is one client: its queue of bytes to send and its writer's wake-up.
type conn struct {
	nc      net.Conn
	mu      sync.Mutex
	drained *sync.Cond // signalled when the writer took the queue
	queue   []byte
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
	for {
		f, err := rd.Next()
		if err != nil {
			break
		}
		switch f.Op {
		case wire.OpSubscribe:
			channels = append(channels, string(f.Channel))
			r.follow(string(f.Channel), c, true)
		case wire.OpUnsubscribe:
			r.follow(string(f.Channel), c, false)
		case wire.OpPublish:
			touched = r.publish(f, touched)
		}
		if !wholeFrame(rd.Pending()) { // the next Next reads: send now
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

// wholeFrame reports whether b starts with a whole frame.
func wholeFrame(b []byte) bool {
	return len(b) >= wire.HeaderLen && int(binary.BigEndian.Uint32(b)) <= len(b)
}

// publish queues f's bytes to every subscriber of its channel and returns
// touched with those it queued to, whose writers are to be woken.
func (r *relay) publish(f wire.Frame, touched []*conn) []*conn {
	r.mu.RLock()
	subs := r.subs[string(f.Channel)]
	r.mu.RUnlock()
	for _, s := range subs {
		s.mu.Lock()
		for len(s.queue) >= stallBytes && !s.closed {
			s.signal()
			s.drained.Wait()
		}
		s.queue = append(s.queue, f.Raw...)
		s.mu.Unlock()
		touched = append(touched, s)
	}
	return touched
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

// write sends the queue whenever woken, swapping it with a spare buffer so
// publishers append while it writes; it ends when the connection closed.
func (c *conn) write() {
	var spare []byte
	for range c.wake {
		c.mu.Lock()
		spare, c.queue = c.queue, spare[:0]
		closed := c.closed
		c.drained.Broadcast()
		c.mu.Unlock()
		if len(spare) > 0 {
			if _, err := c.nc.Write(spare); err != nil {
				c.nc.Close()
			}
		}
		if closed {
			return
		}
	}
}
