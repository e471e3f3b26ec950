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

// quietLogEvery is how often at most one line is logged for a kind of
// event that clients can cause in floods (refused connections, logins
// failing while a store is down): a flood must not become a flood of lines.
const quietLogEvery = 10 * time.Second

// quietLog rate-limits one kind of log line: the first event is logged at
// once, later ones at most every quietLogEvery, with how many happened since.
type quietLog struct {
	mu      sync.Mutex
	last    time.Time
	pending uint64 // events since the last line, this one included
}

// due counts an event and reports whether to log it now, and how many
// events the line stands for.
func (q *quietLog) due(now time.Time) (uint64, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.pending++
	if !q.last.IsZero() && now.Sub(q.last) < quietLogEvery {
		return 0, false
	}
	n := q.pending
	q.pending, q.last = 0, now
	return n, true
}

// lastLine is when the last line was logged.
func (q *quietLog) lastLine() time.Time {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.last
}

// quietLogs is a quietLog per kind of line.
type quietLogs struct {
	mu   sync.Mutex
	logs map[string]*quietLog
}

// due counts an event of kind, as quietLog.due does.
func (q *quietLogs) due(kind string, now time.Time) (uint64, bool) {
	q.mu.Lock()
	l := q.logs[kind]
	if l == nil {
		if q.logs == nil {
			q.logs = map[string]*quietLog{}
		}
		l = &quietLog{}
		q.logs[kind] = l
	}
	q.mu.Unlock()
	return l.due(now)
}

// refusals counts refused connections, and rate-limits their log lines.
type refusals struct {
	mu    sync.Mutex
	total map[string]uint64
	logs  quietLogs
}

func (b *Broker) refuse(reason string, peer net.Addr) {
	r := &b.refusals
	r.mu.Lock()
	if r.total == nil {
		r.total = map[string]uint64{}
	}
	r.total[reason]++
	r.mu.Unlock()
	n, ok := r.logs.due(reason, time.Now())
	if !ok {
		return
	}
	limit := b.cfg.MaxConnections
	if reason == RefusedMaxConnectionsPerIP {
		limit = b.cfg.MaxConnectionsPerIP
	}
	b.cfg.Logger.Warn("connection refused: connection limit reached (further refusals are logged at most every 10 s)",
		slog.String("reason", reason), slog.Int("limit", limit), slog.String("peer", peer.String()), slog.Uint64("refused", n))
}

// refused returns how many connections each limit refused.
func (b *Broker) refused() map[string]uint64 {
	r := &b.refusals
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]uint64, len(r.total))
	for k, v := range r.total {
		out[k] = v
	}
	return out
}
