package broker

import (
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/hpfeeds-go/hpfeeds/internal/source"
)

// maxPlaintextPeers bounds the sources whose plaintext-client lines are
// rate-limited at once; past it, sources not heard from within
// quietLogEvery are forgotten, and if none is, further lines are dropped
// until one is: a scan from many addresses costs bounded memory.
const maxPlaintextPeers = 4096

// plaintextLogs rate-limits, per source (an IPv4 address or an IPv6 /64,
// as login throttling counts them: one IPv6 host has a /64 of addresses to
// log from), the line saying a client spoke plain TCP to a TLS endpoint.
type plaintextLogs struct {
	mu    sync.Mutex
	peers map[netip.Prefix]*quietLog
}

// notTLS reports whether a failed TLS handshake looks like a plaintext
// client: one that sent something other than a TLS record, or nothing at
// all until the deadline (an hpfeeds client waits for INFO in silence).
func notTLS(err error) bool {
	var rec tls.RecordHeaderError
	var ne net.Error
	return errors.As(err, &rec) || errors.As(err, &ne) && ne.Timeout()
}

// handshakeFailed logs a failed TLS handshake: at INFO, at most every
// quietLogEvery per source, when it looks like a plaintext client, which
// would otherwise get no hint on either side; at debug otherwise.
func (c *conn) handshakeFailed(err error) {
	if !notTLS(err) || !c.ip.IsValid() {
		c.log().Debug("TLS handshake failed", "err", err)
		return
	}
	p := &c.b.plaintext
	p.mu.Lock()
	if p.peers == nil {
		p.peers = map[netip.Prefix]*quietLog{}
	}
	src := source.Prefix(c.ip)
	q := p.peers[src]
	if q == nil && len(p.peers) >= maxPlaintextPeers {
		now := time.Now()
		for a, old := range p.peers {
			if now.Sub(old.lastLine()) >= quietLogEvery {
				delete(p.peers, a)
			}
		}
	}
	if q == nil && len(p.peers) < maxPlaintextPeers {
		q = &quietLog{}
		p.peers[src] = q
	}
	p.mu.Unlock()
	if q == nil {
		return
	}
	if n, ok := q.due(time.Now()); ok {
		c.log().Info("plaintext client on a TLS endpoint: it must connect with TLS (logged at most every 10 s per address, per /64 for IPv6)",
			"connections", n, "err", err)
	}
}
