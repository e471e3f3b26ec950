// Package source says which source a client is, for the broker's login
// throttling and log bounds, and keeps per-source state for the exporter's
// HTTP pages: a source is an IPv4 address or the IPv6 /64 one host or site is
// usually given.
package source

import (
	"net"
	"net/netip"
	"sync"
)

// Of is the source of an HTTP request's RemoteAddr ("ip:port"); the zero
// Addr if it has none (a Unix socket).
func Of(remote string) netip.Addr {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return netip.Addr{}
	}
	return ofIP(ap.Addr())
}

// OfAddr is the source of a connection's remote address.
func OfAddr(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ofIP(ta.AddrPort().Addr())
	}
	return netip.Addr{}
}

func ofIP(ip netip.Addr) netip.Addr { return Prefix(ip.Unmap()).Addr() }

// Prefix is ip's source as a prefix: the IPv4 address, or the IPv6 /64.
func Prefix(ip netip.Addr) netip.Prefix {
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, _ := ip.Prefix(bits)
	return p
}

// Map holds a T per source, made by New on first use. Past Max sources it
// forgets them all, so each starts afresh: what T bounds is then at most
// Max times its own bound, and memory stays bounded.
type Map[T any] struct {
	New func() *T
	Max int

	mu sync.Mutex
	m  map[netip.Addr]*T
}

// Get returns src's T.
func (s *Map[T]) Get(src netip.Addr) *T {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.m[src]
	if v == nil {
		if s.m == nil || len(s.m) >= s.Max {
			s.m = map[netip.Addr]*T{}
		}
		v = s.New()
		s.m[src] = v
	}
	return v
}
