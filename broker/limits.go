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
// With burst and every set, the first burst events of each window of every
// are logged, and the rest counted: flush takes that count for a summary.
type quietLog struct {
	every time.Duration // the window; 0: quietLogEvery
	burst int           // lines per window; 0: 1

	mu      sync.Mutex
	last    time.Time // when the current window began, with its first line
	lines   int       // lines logged in the current window
	pending uint64    // events since the last line, this one included
}

// due counts an event and reports whether to log it now, and how many
// events the line stands for.
func (q *quietLog) due(now time.Time) (uint64, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.pending++
	if q.last.IsZero() || now.Sub(q.last) >= q.window() {
		q.last, q.lines = now, 0
	}
	if q.lines >= max(q.burst, 1) {
		return 0, false
	}
	q.lines++
	n := q.pending
	q.pending = 0
	return n, true
}

func (q *quietLog) window() time.Duration {
	if q.every > 0 {
		return q.every
	}
	return quietLogEvery
}

// flush takes the events not logged in a window that has ended, or in the
// current one too with all set, and when that window began.
func (q *quietLog) flush(now time.Time, all bool) (uint64, time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.pending == 0 || !all && now.Sub(q.last) < q.window() {
		return 0, time.Time{}
	}
	n := q.pending
	q.pending = 0
	return n, q.last
}

// lastLine is when the current window began: the last line, with no burst.
func (q *quietLog) lastLine() time.Time {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.last
}

// quietLogs is a quietLog per kind of line, each with every and burst.
type quietLogs struct {
	every time.Duration
	burst int

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
		l = &quietLog{every: q.every, burst: q.burst}
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
