// Package tcpproxy forwards TCP connections to a server and can cut or
// stall them, to simulate a credential database going away in tests and the
// soak run.
package tcpproxy

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy forwards connections to a target. Cut makes the server go away
// loudly (connections dropped, new ones refused); Stall makes it go silent,
// as behind a firewall that drops packets.
type Proxy struct {
	l     net.Listener
	mu    sync.Mutex
	down  bool
	stall chan struct{} // non-nil while stalled; closed when the stall ends
	conns []net.Conn
	delay atomic.Int64 // one-way latency added to every read forwarded
}

// SetLatency delays every read forwarded, in each direction, by d: a
// request and its answer take 2d more, as across a network.
func (p *Proxy) SetLatency(d time.Duration) { p.delay.Store(int64(d)) }

// New forwards a free loopback port to target until Close.
func New(target string) (*Proxy, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{l: l}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			switch {
			case p.down:
				c.Close()
			case p.stall != nil:
				// Accepted but never answered, until Restore drops it.
				p.conns = append(p.conns, c)
			default:
				s, err := net.Dial("tcp", target)
				if err != nil {
					c.Close()
					break
				}
				p.conns = append(p.conns, c, s)
				go p.pipe(s, c)
				go p.pipe(c, s)
			}
			p.mu.Unlock()
		}
	}()
	return p, nil
}

// pipe copies src to dst, holding bytes back while the proxy is stalled.
func (p *Proxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			stall := p.stall
			p.mu.Unlock()
			if stall != nil {
				<-stall
			}
			if d := p.delay.Load(); d > 0 {
				time.Sleep(time.Duration(d))
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.l.Addr().String() }

// Cut drops every forwarded connection and refuses new ones.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	p.dropLocked()
}

// Stall stops forwarding without closing anything: bytes sent either way
// are held, and new connections are accepted but never answered.
func (p *Proxy) Stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stall == nil {
		p.stall = make(chan struct{})
	}
}

// Restore forwards new connections again. Connections that lived through a
// stall are dropped, as their peers would have given up on them.
func (p *Proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = false
	if p.stall != nil {
		p.dropLocked()
		close(p.stall)
		p.stall = nil
	}
}

func (p *Proxy) dropLocked() {
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// Close stops listening and drops every connection.
func (p *Proxy) Close() error {
	err := p.l.Close()
	p.Cut()
	p.Restore()
	return err
}
