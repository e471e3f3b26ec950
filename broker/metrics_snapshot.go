package broker

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// PublishSizeBuckets are the upper bounds, in bytes, of the reference's
// hpfeeds_broker_receive_publish_size histogram: 1024 × 2^k up to 4 MiB.
var PublishSizeBuckets = [...]uint64{
	1024, 2048, 4096, 8192, 16384, 32768, 65536,
	131072, 262144, 524288, 1048576, 2097152, 4194304,
}

// NumPublishBuckets counts PublishSizeBuckets and the +Inf bucket.
const NumPublishBuckets = len(PublishSizeBuckets) + 1

// publishBucket is the index of the first bucket whose bound is >= n.
func publishBucket(n int) int {
	if n <= 1024 {
		return 0
	}
	return min(bits.Len(uint(n-1)>>10), len(PublishSizeBuckets))
}

// pubChan is a channel a connection has been allowed to publish to, with
// its topic and what the connection published there. Resolving it once per
// connection and channel keeps the publish path free of shared maps: only
// the reader goroutine adds, scrapes read.
type pubChan struct {
	t       *topic
	sum     atomic.Uint64
	last    atomic.Int64 // the broker's coarse clock at the last publish (Unix ns)
	buckets [NumPublishBuckets]atomic.Uint64
	// Set by the reader when revalidation took the channel away, so the
	// next publish there is refused; the counters stay for the metrics.
	revoked bool
}

func (p *pubChan) observe(payload int, now int64) {
	p.sum.Add(uint64(payload))
	if p.last.Load() != now { // the clock ticks coarsely: mostly a load
		p.last.Store(now)
	}
	p.buckets[publishBucket(payload)].Add(1)
}

// count is the number of publishes.
func (p *pubChan) count() uint64 {
	var n uint64
	for i := range p.buckets {
		n += p.buckets[i].Load()
	}
	return n
}

// IdentStats sums one ident's connections. The buffer sizes and
// Connections cover live connections only; the counters also include every
// connection of the ident that has closed.
type IdentStats struct {
	Connections       int    // live authenticated connections
	SendBufferSize    uint64 // bytes queued and not yet written
	ReceiveBufferSize uint64 // bytes read and not yet parsed into frames

	ReceiveBufferFill uint64 // bytes read after authentication
	SendBufferFill    uint64 // payload bytes of messages queued for sending
	SendBufferDrain   uint64 // bytes written after authentication
	DeadlineStarts    uint64
	DeadlineRecovers  uint64
	Delivered         uint64 // messages queued for sending
	FramesWritten     uint64
	Writes            uint64 // write calls, each carrying one or more frames
	FlowPauses        uint64 // reads held for stalled subscribers (flow control)
	MemoryPauses      uint64 // reads held because memory was tight
}

// IdentChan labels a count by ident and channel.
type IdentChan struct{ Ident, Chan string }

// IdentOwner labels a count by ident and owner.
type IdentOwner struct{ Ident, Owner string }

// PublishStats is what one ident published to one channel: payload bytes
// and counts per size bucket (not cumulative; the last is +Inf).
type PublishStats struct {
	Sum     uint64
	Buckets [NumPublishBuckets]uint64
	Last    int64 // Unix ns of the last publish, to the broker's coarse clock (a quarter second)
}

// Count is the number of publishes.
func (p *PublishStats) Count() uint64 {
	var n uint64
	for _, b := range p.Buckets {
		n += b
	}
	return n
}

// Snapshot is the broker's state for a metrics scrape. Every label value in
// it is an authenticated ident, its owner, or a channel it was allowed to
// use, except the empty ident that counts failures before authentication.
type Snapshot struct {
	Connections  int    // open connections, authenticated or not
	Made         uint64 // connections accepted
	Ready        map[string]uint64
	Lost         map[string]uint64
	Errors       map[ErrorKey]uint64
	Backpressure map[BackpressureKey]uint64
	Refused      map[string]uint64 // connections refused at accept, by limit (RefusedMaxConnections…)

	MemoryUsed    int64  // bytes in the memory budget: send queues and large reader buffers
	MemoryLimit   int64  // the budget; zero if none
	FrameTimeouts uint64 // connections closed for a frame not completed in time
	PartialCloses uint64 // connections closed over the budget for the largest partial frame
	// Frame buffers outside the Go heap (bufs.go), in bytes: holding
	// queued frames, and free, kept for reuse until the next trim.
	FrameBuffersInUse, FrameBuffersFree int64

	Idents        map[string]*IdentStats
	Owners        map[IdentOwner]int // live authenticated connections
	Subscriptions map[IdentChan]int  // live subscriptions
	Publishes     map[IdentChan]*PublishStats
	Undelivered   map[string]uint64 // per channel: messages published here that reached no subscriber
	Throttle      ThrottleStats
}

// retired holds the counters of connections that have closed, folded once
// per connection when it closes. Guarded by Broker.mu, together with the
// live set, so a scrape counts each connection exactly once.
type retired struct {
	idents map[string]*IdentStats
	pubs   map[IdentChan]*PublishStats
}

// Snapshot sums the live connections and those that have closed. It costs
// a walk of every connection and its own subscriptions (no channel's lock):
// call it per scrape, not per message.
func (b *Broker) Snapshot() *Snapshot {
	s := &Snapshot{
		Ready:         map[string]uint64{},
		Lost:          map[string]uint64{},
		Errors:        map[ErrorKey]uint64{},
		Backpressure:  map[BackpressureKey]uint64{},
		Idents:        map[string]*IdentStats{},
		Owners:        map[IdentOwner]int{},
		Subscriptions: map[IdentChan]int{},
		Publishes:     map[IdentChan]*PublishStats{},
		Undelivered:   map[string]uint64{},
	}
	b.mu.Lock()
	s.Connections = len(b.conns)
	for id, r := range b.retired.idents {
		st := *r
		s.Idents[id] = &st
	}
	for k, r := range b.retired.pubs {
		p := *r
		s.Publishes[k] = &p
	}
	for c := range b.conns {
		c.snapshot(s)
	}
	b.mu.Unlock()

	s.Made = b.stats.made.Load()
	s.Refused = b.refused()
	s.Throttle = b.throttle.stats(time.Now())
	s.MemoryUsed, s.MemoryLimit = b.mem.used.Load(), b.mem.limit
	s.FrameBuffersInUse, s.FrameBuffersFree = bufsInUse(), bufFreeBytes.Load()
	s.FrameTimeouts = b.mem.frameTimeouts.Load()
	s.PartialCloses = b.mem.partialCloses.Load()
	b.stats.mu.Lock()
	for k, v := range b.stats.ready {
		s.Ready[k] = v
	}
	for k, v := range b.stats.lost {
		s.Lost[k] = v
	}
	for k, v := range b.stats.errors {
		s.Errors[k] = v
	}
	for k, v := range b.stats.backpressure {
		s.Backpressure[k] = v
	}
	b.stats.mu.Unlock()

	for _, t := range b.topicList() {
		s.Undelivered[t.name] = t.undelivered.Load()
	}
	return s
}

func (s *Snapshot) ident(id string) *IdentStats {
	st := s.Idents[id]
	if st == nil {
		st = &IdentStats{}
		s.Idents[id] = st
	}
	return st
}

// snapshot adds a live connection to s. Called with b.mu held.
func (c *conn) snapshot(s *Snapshot) {
	sess := c.sess.Load()
	if sess == nil {
		return // unauthenticated: no label to count it under
	}
	st := s.ident(sess.identStr)
	st.Connections++
	s.Owners[IdentOwner{sess.identStr, sess.owner}]++
	st.SendBufferSize += c.queuedBytes()
	// Parsed before read: both only grow and read >= parsed, so this
	// order never sees more parsed than read.
	parsed := c.stats.parsedBytes.Load()
	st.ReceiveBufferSize += c.stats.recvBytes.Load() - parsed
	c.addStats(st)
	c.pubMu.Lock()
	for _, p := range c.pubList {
		addPublishes(s.Publishes, IdentChan{sess.identStr, p.t.name}, p)
	}
	c.eachSub(sess, func(name string) { s.Subscriptions[IdentChan{sess.identStr, name}]++ })
	c.pubMu.Unlock()
}

// retire folds a closing connection's counters into the broker's totals.
// Called with b.mu held, as the connection leaves b.conns; its reader has
// returned, so c.pubs no longer changes.
func (b *Broker) retire(c *conn) {
	sess := c.sess.Load()
	if sess == nil {
		return
	}
	r := &b.retired
	if r.idents == nil {
		r.idents = map[string]*IdentStats{}
		r.pubs = map[IdentChan]*PublishStats{}
	}
	st := r.idents[sess.identStr]
	if st == nil {
		st = &IdentStats{}
		r.idents[sess.identStr] = st
	}
	c.addStats(st)
	for _, p := range c.pubList {
		addPublishes(r.pubs, IdentChan{sess.identStr, p.t.name}, p)
	}
	b.loggedOut(c, sess)
}

// addStats adds the connection's counters to st.
func (c *conn) addStats(st *IdentStats) {
	cs := &c.stats
	c.q.mu.Lock()
	st.SendBufferFill += c.q.fill
	st.Delivered += c.q.delivered
	c.q.mu.Unlock()
	st.ReceiveBufferFill += cs.recvBytes.Load() - cs.recvAtAuth.Load()
	st.SendBufferDrain += cs.sentBytes.Load()
	st.DeadlineStarts += cs.deadlineStarts.Load()
	st.DeadlineRecovers += cs.deadlineRecovers.Load()
	st.FlowPauses += cs.flowPauses.Load()
	st.MemoryPauses += cs.memoryPauses.Load()
	st.FramesWritten += cs.sentFrames.Load()
	st.Writes += cs.writes.Load()
}

func addPublishes(m map[IdentChan]*PublishStats, k IdentChan, p *pubChan) {
	ps := m[k]
	if ps == nil {
		ps = &PublishStats{}
		m[k] = ps
	}
	ps.Sum += p.sum.Load()
	ps.Last = max(ps.Last, p.last.Load())
	for i := range p.buckets {
		ps.Buckets[i] += p.buckets[i].Load()
	}
}
