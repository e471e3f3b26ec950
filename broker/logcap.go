package broker

import (
	"net/netip"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/hpfeeds-go/hpfeeds/internal/source"
)

// Clients choose some of the text the broker records: the channel of a
// refused SUBSCRIBE (up to --max-subscribe-size, 1 MiB), the ident of a
// spoofed PUBLISH or of a failed login. That text reaches log lines, the
// disconnect reasons of the status pages and the terminal of `hpfeeds-broker
// status`, so it is cut where the broker records it (Clip), and the lines
// that each session writes are bounded per source (sessionLogs).

// ClientTextMax is how many bytes of a text a client chose the broker keeps
// in a disconnect reason or a log field; Clip says how many more there were.
const ClientTextMax = 512

// logIdentMax bounds the bytes of an unauthenticated client's ident in a
// log line; the handler quotes it, escaping what is not printable.
const logIdentMax = 32

// Clip returns s if it has at most max bytes, else its first max bytes or
// fewer (not splitting a UTF-8 character) and "…(+N bytes)" for the N cut.
func Clip(s string, max int) string {
	if len(s) <= max {
		return s
	}
	cut := max
	for i := max; i > 0 && i > max-utf8.UTFMax; i-- {
		if utf8.RuneStart(s[i]) {
			cut = i
			break
		}
	}
	return s[:cut] + "…(+" + strconv.Itoa(len(s)-cut) + " bytes)"
}

// logIdent is an unauthenticated client's ident as a log line shows it.
func logIdent(ident string) string { return Clip(ident, logIdentMax) }

// logText is a client-chosen text as a log line or a reason shows it.
func logText(s string) string { return Clip(s, ClientTextMax) }

// The login and disconnect lines of each source: the first
// sessionLogBurst of each kind every sessionLogEvery, then one summary line
// with the count of the lines left out, when the minute is over.
const (
	sessionLogBurst = 20
	sessionLogEvery = time.Minute
	// maxLogSources bounds the sources remembered; past it, new sources
	// share one budget until the sweep forgets quiet ones.
	maxLogSources = 4096
)

// sourceLogs rate-limits kinds of log lines per source: an IPv4 address or
// an IPv6 /64, as login throttling counts them (one IPv6 host has a /64 of
// addresses to log from).
type sourceLogs struct {
	mu      sync.Mutex
	sources map[netip.Prefix]*quietLogs
}

// of returns ip's source and its quietLogs; invalid addresses (not TCP)
// and sources past maxLogSources share the zero prefix's.
func (s *sourceLogs) of(ip netip.Addr) (netip.Prefix, *quietLogs) {
	var src netip.Prefix
	if ip.IsValid() {
		src = source.Prefix(ip)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sources == nil {
		s.sources = map[netip.Prefix]*quietLogs{}
	}
	l := s.sources[src]
	if l == nil && len(s.sources) >= maxLogSources {
		src = netip.Prefix{}
		l = s.sources[src]
	}
	if l == nil {
		l = &quietLogs{every: sessionLogEvery, burst: sessionLogBurst}
		s.sources[src] = l
	}
	return src, l
}

// suppressed is a summary line to write: n lines of kind from src left out
// in the window that began at since.
type suppressed struct {
	src   netip.Prefix
	kind  string
	n     uint64
	since time.Time
}

// sweep takes the counts of lines left out in windows that ended (all of
// them with all set) and forgets sources with nothing in a window now.
func (s *sourceLogs) sweep(now time.Time, all bool) []suppressed {
	var out []suppressed
	s.mu.Lock()
	defer s.mu.Unlock()
	for src, l := range s.sources {
		quiet := true
		l.mu.Lock()
		for kind, q := range l.logs {
			if n, since := q.flush(now, all); n > 0 {
				out = append(out, suppressed{src, kind, n, since})
			}
			if now.Sub(q.lastLine()) < q.window() {
				quiet = false
			}
		}
		l.mu.Unlock()
		if quiet {
			delete(s.sources, src)
		}
	}
	return out
}

// logSession writes an INFO line of a session (kind "login" or
// "disconnect") unless its source wrote sessionLogBurst of them in the
// last minute; a window's count of lines left out is written first.
func (c *conn) logSession(kind string, args ...any) {
	now := time.Now()
	src, l := c.b.sessionLogs.of(c.ip)
	if n, since := l.flushKind(kind, now); n > 0 {
		c.b.logSuppressed([]suppressed{{src, kind, n, since}})
	}
	if _, ok := l.due(kind, now); ok {
		c.b.cfg.Logger.Info(kind, args...)
	}
}

// flushKind is flush of kind's quietLog, if there is one.
func (q *quietLogs) flushKind(kind string, now time.Time) (uint64, time.Time) {
	q.mu.Lock()
	l := q.logs[kind]
	q.mu.Unlock()
	if l == nil {
		return 0, time.Time{}
	}
	return l.flush(now, false)
}

// logSuppressed writes the summary lines of sessionLogs.
func (b *Broker) logSuppressed(lines []suppressed) {
	for _, s := range lines {
		src := "other"
		if s.src.IsValid() {
			src = s.src.String()
		}
		b.cfg.Logger.Info(s.kind+" lines left out: over "+strconv.Itoa(sessionLogBurst)+" a minute from this source",
			"source", src, "suppressed", s.n, "since", s.since)
	}
}
