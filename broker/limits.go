package broker

import (
	"log/slog"
	"net"
	"sync"
	"time"
)

// Why a connection was refused at accept; the label of
// hpfeeds_broker_connections_refused_total.
const (
	RefusedMaxConnections      = "max-connections"
	RefusedMaxConnectionsPerIP = "max-connections-per-ip"
)

// refusalLogEvery is how often at most one limit is logged: a flood of
// refused connections must not become a flood of log lines.
const refusalLogEvery = 10 * time.Second

// refusals counts refused connections, and rate-limits their log lines.
type refusals struct {
	mu      sync.Mutex
	total   map[string]uint64
	logged  map[string]time.Time
	pending map[string]uint64 // refused since the last line
}

func (b *Broker) refuse(reason string, peer net.Addr) {
	r := &b.refusals
	now := time.Now()
	r.mu.Lock()
	if r.total == nil {
		r.total, r.logged, r.pending = map[string]uint64{}, map[string]time.Time{}, map[string]uint64{}
	}
	r.total[reason]++
	r.pending[reason]++
	if now.Sub(r.logged[reason]) < refusalLogEvery {
		r.mu.Unlock()
		return
	}
	n := r.pending[reason]
	r.pending[reason] = 0
	r.logged[reason] = now
	r.mu.Unlock()

	limit := b.cfg.MaxConnections
	if reason == RefusedMaxConnectionsPerIP {
		limit = b.cfg.MaxConnectionsPerIP
	}
	b.cfg.Logger.Warn("connection refused: --"+reason+" reached (further refusals are logged at most every 10 s)",
		slog.Int("limit", limit), slog.String("peer", peer.String()), slog.Uint64("refused", n))
}

// Refused returns how many connections each limit refused.
func (b *Broker) Refused() map[string]uint64 {
	r := &b.refusals
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]uint64, len(r.total))
	for k, v := range r.total {
		out[k] = v
	}
	return out
}
