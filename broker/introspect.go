package broker

import (
	"cmp"
	"crypto/tls"
	"slices"
	"sync"
	"time"
)

// What the status pages show, computed when asked like Snapshot: the
// publish path only stamps its channel with the coarse clock.

// ConnInfo is one open connection.
type ConnInfo struct {
	ID            uint64    `json:"cid"`
	Ident         string    `json:"ident"` // empty until authenticated
	Owner         string    `json:"owner"`
	Addr          string    `json:"addr"`
	Endpoint      string    `json:"endpoint"`
	TLS           bool      `json:"tls"`
	Since         time.Time `json:"since"`
	Subscriptions []string  `json:"subscriptions"`
	FramesIn      uint64    `json:"frames_in"`
	FramesOut     uint64    `json:"frames_out"`
	BytesIn       uint64    `json:"bytes_in"`
	BytesOut      uint64    `json:"bytes_out"`
	BytesQueued   uint64    `json:"bytes_queued"`
	Published     uint64    `json:"published"` // messages
	LastPublish   time.Time `json:"last_publish,omitzero"`
}

// ChannelInfo is one channel: who uses it now and what flowed through it.
type ChannelInfo struct {
	Name        string    `json:"name"`
	Publishers  int       `json:"publishers"` // open connections that have published there
	Subscribers int       `json:"subscribers"`
	Messages    uint64    `json:"messages"` // published since start
	Bytes       uint64    `json:"bytes"`    // payload bytes published since start
	MsgRate     float64   `json:"messages_per_second"`
	ByteRate    float64   `json:"bytes_per_second"`
	LastPublish time.Time `json:"last_publish,omitzero"`
	// Messages published on this broker that reached no subscriber, since
	// start and over the rate window.
	Undelivered     uint64  `json:"undelivered"`
	UndeliveredRate float64 `json:"undelivered_per_second"`
	// Unheard: publishers are connected, nobody subscribes, and messages
	// went undelivered during the rate window (a logger is down).
	Unheard bool `json:"unheard"`
	// Retained is the channel's stored history if retained (retain_info.go).
	Retained *RetainedInfo `json:"retained,omitempty"`
}

// IdentInfo is an ident that has logged in since the broker started.
type IdentInfo struct {
	Ident          string               `json:"ident"`
	Owner          string               `json:"owner"`
	Connections    int                  `json:"connections"`
	Publisher      bool                 `json:"publisher"` // its last session may publish somewhere
	Stale          bool                 `json:"stale"`
	Logins         uint64               `json:"logins"`
	FirstLogin     time.Time            `json:"first_login"`
	LastLogin      time.Time            `json:"last_login"`
	LastAddr       string               `json:"last_addr"`
	LastDisconnect time.Time            `json:"last_disconnect,omitzero"`
	LastReason     string               `json:"last_disconnect_reason,omitempty"`
	LastPublish    time.Time            `json:"last_publish,omitzero"`
	Channels       map[string]time.Time `json:"last_publish_per_channel"`
	Retained       []RetainLag          `json:"retained,omitempty"` // retain_info.go
}

// identRecord is what the broker remembers of an ident between its
// connections. Guarded by Broker.mu.
type identRecord struct {
	owner                                 string
	publisher                             bool
	logins                                uint64
	firstLogin, lastLogin, lastDisconnect time.Time
	lastAddr, lastReason                  string
}

// loggedIn records a successful login.
func (b *Broker) loggedIn(c *conn, s *session) {
	now := time.Now()
	b.clock.Store(now.UnixNano()) // so no publish of this session is stamped before it began
	b.mu.Lock()
	defer b.mu.Unlock()
	r := b.idents[s.identStr]
	if r == nil {
		r = &identRecord{firstLogin: now}
		b.idents[s.identStr] = r
	}
	r.owner, r.publisher = s.owner, len(s.pub) > 0
	r.logins++
	r.lastLogin = now
	r.lastAddr = c.addr
}

// loggedOut records an authenticated connection's end. Called with b.mu held.
func (b *Broker) loggedOut(c *conn, s *session) {
	if r := b.idents[s.identStr]; r != nil {
		r.lastDisconnect = time.Now()
		r.lastReason = c.Reason()
	}
}

func unixTime(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// queuedBytes is what waits in the send queue.
func (c *conn) queuedBytes() uint64 {
	c.q.mu.Lock()
	queued := c.q.queued
	c.q.mu.Unlock()
	if c.q.dropped.Load() {
		return 0 // closed for backpressure: what was queued is gone
	}
	return uint64(max(queued, 0))
}

// published sums what the connection published: messages and the latest
// stamp.
func (c *conn) published() (n uint64, last int64) {
	c.pubMu.Lock()
	defer c.pubMu.Unlock()
	for _, p := range c.pubList {
		n += p.count()
		last = max(last, p.last.Load())
	}
	return n, last
}

func (c *conn) framesIn() uint64 {
	n, _ := c.published()
	return n + c.stats.ctrlFrames.Load()
}

func (c *conn) info() ConnInfo {
	i := ConnInfo{
		ID: c.id, Addr: c.addr, Endpoint: c.endpoint, Since: c.since,
		Subscriptions: []string{},
		FramesOut:     c.stats.sentFrames.Load(),
		BytesIn:       c.stats.recvBytes.Load(),
		BytesOut:      c.stats.sentBytes.Load(),
		BytesQueued:   c.queuedBytes(),
	}
	_, i.TLS = c.nc.(*tls.Conn)
	s := c.sess.Load()
	if s != nil {
		i.Ident, i.Owner = s.identStr, s.owner
	}
	var last int64
	c.pubMu.Lock()
	for _, p := range c.pubList {
		i.Published += p.count()
		last = max(last, p.last.Load())
	}
	c.eachSub(s, func(name string) { i.Subscriptions = append(i.Subscriptions, name) })
	c.pubMu.Unlock()
	slices.Sort(i.Subscriptions)
	i.FramesIn = i.Published + c.stats.ctrlFrames.Load()
	i.LastPublish = unixTime(last)
	return i
}

// topicList is every channel's topic, taken under the lock.
func (b *Broker) topicList() []*topic {
	b.topicsMu.RLock()
	defer b.topicsMu.RUnlock()
	ts := make([]*topic, 0, len(b.topics))
	for _, t := range b.topics {
		ts = append(ts, t)
	}
	return ts
}

// editSubs changes the reader's subscription list under pubMu, so a scrape
// reads each connection's own list and never holds a channel's lock while
// it walks subscribers (a channel of 50,000 made publishes wait on that).
func (c *conn) editSubs(edit func([]*topic) []*topic) {
	c.pubMu.Lock()
	c.subs = edit(c.subs)
	c.pubMu.Unlock()
}

// eachSub calls f with every channel c subscribes to. The reader forgets a
// subscription revalidation took away only at its next frame, so those the
// session no longer allows are left out. Called with c.pubMu held.
func (c *conn) eachSub(s *session, f func(name string)) {
	for _, t := range c.subs {
		if s != nil && allowed(s.sub, []byte(t.name)) {
			f(t.name)
		}
	}
}

// liveConns is the open connections, taken under the lock accepts need; a
// connection closing meanwhile is still shown, with its final counters.
func (b *Broker) liveConns() []*conn {
	b.mu.Lock()
	defer b.mu.Unlock()
	conns := make([]*conn, 0, len(b.conns))
	for c := range b.conns {
		conns = append(conns, c)
	}
	return conns
}

// Connections lists the open connections, in no particular order.
func (b *Broker) Connections() []ConnInfo {
	conns := b.liveConns()
	out := make([]ConnInfo, 0, len(conns))
	for _, c := range conns {
		out = append(out, c.info())
	}
	return out
}

// ConnectionsByID lists the open connections in cid order, at most limit
// of them from offset, and how many are open. Only those listed are read:
// a status page asks for the page it shows.
func (b *Broker) ConnectionsByID(offset, limit int) (page []ConnInfo, total int) {
	conns := b.liveConns()
	slices.SortFunc(conns, func(x, y *conn) int { return cmp.Compare(x.id, y.id) })
	lo := min(offset, len(conns))
	hi := lo + min(limit, len(conns)-lo) // no overflow, whatever limit asks
	page = make([]ConnInfo, 0, hi-lo)
	for _, c := range conns[lo:hi] {
		page = append(page, c.info())
	}
	return page, len(conns)
}

// chanTotal is what was published to a channel since start.
type chanTotal struct {
	msgs, bytes uint64
	undelivered uint64
	last        int64
	publishers  int
	subscribers int
}

// channelTotals sums the channels' publishes over closed and open
// connections, and counts their subscribers from each connection's list.
func (b *Broker) channelTotals() map[string]chanTotal {
	m := map[string]chanTotal{}
	for _, t := range b.topicList() {
		if n := t.undelivered.Load(); n > 0 {
			m[t.name] = chanTotal{undelivered: n}
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for k, p := range b.retired.pubs {
		t := m[k.Chan]
		t.msgs += p.Count()
		t.bytes += p.Sum
		t.last = max(t.last, p.Last)
		m[k.Chan] = t
	}
	for c := range b.conns {
		c.pubMu.Lock()
		for _, p := range c.pubList {
			name := p.t.name
			t := m[name]
			t.msgs += p.count()
			t.bytes += p.sum.Load()
			t.last = max(t.last, p.last.Load())
			t.publishers++
			m[name] = t
		}
		c.eachSub(c.sess.Load(), func(name string) {
			t := m[name]
			t.subscribers++
			m[name] = t
		})
		c.pubMu.Unlock()
	}
	return m
}

// Channels lists every channel a user was allowed to use, sorted by name,
// with rates over about the last minute.
func (b *Broker) Channels() []ChannelInfo {
	now := time.Now()
	totals := b.channelTotals()
	base := b.rates.base()
	secs := now.Sub(base.at).Seconds()
	var out []ChannelInfo
	for _, t := range b.topicList() {
		cur, old := totals[t.name], base.totals[t.name]
		ci := ChannelInfo{Name: t.name, Publishers: cur.publishers, Subscribers: cur.subscribers,
			Messages: cur.msgs, Bytes: cur.bytes, LastPublish: unixTime(cur.last),
			Undelivered: cur.undelivered}
		if secs > 0 {
			ci.MsgRate = float64(cur.msgs-old.msgs) / secs
			ci.ByteRate = float64(cur.bytes-old.bytes) / secs
			ci.UndeliveredRate = float64(cur.undelivered-old.undelivered) / secs
		}
		ci.Unheard = ci.Publishers > 0 && cur.subscribers == 0 && cur.undelivered > old.undelivered
		b.channelRetainInfo(t, &ci)
		out = append(out, ci)
	}
	slices.SortFunc(out, func(a, b ChannelInfo) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// Idents lists every ident that has logged in since start, sorted. An
// ident that may publish is stale when it has published nothing for
// staleAfter (counted from its first login if it never published).
func (b *Broker) Idents(staleAfter time.Duration) []IdentInfo {
	now := time.Now()
	s := b.Snapshot()
	b.mu.Lock()
	out := make([]IdentInfo, 0, len(b.idents))
	for id, r := range b.idents {
		out = append(out, IdentInfo{
			Ident: id, Owner: r.owner, Publisher: r.publisher, Logins: r.logins,
			FirstLogin: r.firstLogin, LastLogin: r.lastLogin, LastAddr: r.lastAddr,
			LastDisconnect: r.lastDisconnect, LastReason: r.lastReason,
			Channels: map[string]time.Time{},
		})
	}
	b.mu.Unlock()
	byIdent := make(map[string]*IdentInfo, len(out))
	lags := b.RetainLags()
	for i := range out {
		byIdent[out[i].Ident] = &out[i]
		out[i].Retained = lags[out[i].Ident]
	}
	for k, p := range s.Publishes {
		if in := byIdent[k.Ident]; in != nil && p.Last != 0 {
			t := unixTime(p.Last)
			in.Channels[k.Chan] = t
			if t.After(in.LastPublish) {
				in.LastPublish = t
			}
		}
	}
	for i := range out {
		in := &out[i]
		if st := s.Idents[in.Ident]; st != nil {
			in.Connections = st.Connections
		}
		since := in.LastPublish
		if since.IsZero() {
			since = in.FirstLogin
		}
		in.Stale = in.Publisher && now.Sub(since) > staleAfter
	}
	slices.SortFunc(out, func(a, b IdentInfo) int { return cmp.Compare(a.Ident, b.Ident) })
	return out
}

// rateWindow keeps channel totals sampled every few seconds, enough to
// compute rates over the last minute.
type rateWindow struct {
	mu      sync.Mutex
	samples []rateSample // oldest first
}

type rateSample struct {
	at     time.Time
	totals map[string]chanTotal
}

const (
	rateSpan    = time.Minute
	clockTick   = 250 * time.Millisecond // the coarse clock's resolution
	sampleEvery = 20                     // clock ticks between rate samples (5 s)
)

func (w *rateWindow) add(at time.Time, totals map[string]chanTotal) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.samples = append(w.samples, rateSample{at, totals})
	// Keep the newest sample at least rateSpan old as the base.
	for len(w.samples) > 1 && at.Sub(w.samples[1].at) >= rateSpan {
		w.samples = slices.Delete(w.samples, 0, 1)
	}
}

func (w *rateWindow) base() rateSample {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.samples[0]
}

// background keeps the coarse clock and samples the channels' totals until
// Shutdown.
func (b *Broker) background() {
	defer b.wg.Done()
	tick := time.NewTicker(clockTick)
	defer tick.Stop()
	for n := 1; ; n++ {
		select {
		case <-b.ctx.Done():
			return
		case <-tick.C:
			now := time.Now()
			b.clock.Store(now.UnixNano())
			if n%int(bufTrim/clockTick) == 0 {
				trimBufs()
			}
			if n%sampleEvery == 0 {
				b.rates.add(now, b.channelTotals())
				b.logSuppressed(b.sessionLogs.sweep(now, false))
			}
		}
	}
}
