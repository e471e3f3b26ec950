package broker

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hpfeeds-go/hpfeeds/retain"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

// Retained channels (see package retain and docs/retention.md). A publish
// to a retained channel is appended to the channel's log and delivered
// live under the log's lock, so log order is delivery order. A subscriber
// whose ident has a saved position is not added to the channel at once: a
// goroutine sends it the stored frames after the position as its queue
// drains, then, under the log's lock, the frames not yet stored, and adds
// it to the channel: nothing is missed or sent twice at the switch. When
// the subscription ends, the position saved is that of the first frame the
// peer's TCP did not acknowledge (see ackedOffset). A subscriber whose
// position or history the store cannot give goes live at once and is sent
// what it missed once the store answers again (awaitStore).

// retainState is the broker's retained subscriptions, per connection.
type retainState struct {
	once     sync.Once // starts checkpointLoop
	mu       sync.Mutex
	conns    map[*conn]*retainConn
	catching atomic.Int64 // subscriptions catching up now
	pace     pacer        // spaces every catch-up's batches
}

// retainConn is a connection's retained subscriptions, and a duplicate of
// its socket (-1 if none) so the kernel can still be asked what the peer
// acknowledged after the writer closed the connection on a failed write.
type retainConn struct {
	subs []*retainSub
	sock int
}

// catchUpMark is how full a catching-up subscriber's queue may be before
// the next stored batch is read: what catch-up holds in memory per
// subscriber is this plus one batch.
const catchUpMark = 256 << 10

// catchUpRing bounds the stored batches a catching-up subscription
// remembers the queue offsets of.
const catchUpRing = 256

type ringEntry struct {
	off int64 // the queue's pushed bytes before the batch's first frame
	pos retain.Pos
}

// catchUpSlack is how far behind its schedule the pacer may fall and
// still catch up, so that timers waking late under load do not lower the
// rate. Time unused beyond it is not saved up for a burst.
const catchUpSlack = 4 * time.Millisecond

// pacer spaces catch-up batches so that together they go at most at the
// store's replay rate (retain.Options.ReplayRate).
type pacer struct {
	mu   sync.Mutex
	next time.Time // when the next batch may go
}

// reserve books n bytes' share of rate (bytes a second; 0: unpaced) and
// returns how long after now the caller must wait before sending them.
func (p *pacer) reserve(now time.Time, n int, rate int64) time.Duration {
	if rate <= 0 {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if early := now.Add(-catchUpSlack); p.next.Before(early) {
		p.next = early
	}
	at := p.next
	p.next = p.next.Add(time.Duration(float64(n) / float64(rate) * float64(time.Second)))
	return max(0, at.Sub(now))
}

// retainSub is one connection's subscription to a retained channel.
type retainSub struct {
	c      *conn
	t      *topic
	ident  string
	closed atomic.Bool
	live   bool  // added to the topic; guarded by the log's lock
	liveAt int64 // the queue's pushed bytes when it went live; guarded by the log's lock
	// pending: live without what it missed, as the store did not answer
	// (awaitStore); its position is not saved meanwhile, so the one saved
	// before stays. Guarded by the log's lock.
	pending bool

	mu    sync.Mutex // guards the catch-up ring
	start retain.Pos // where catch-up began, or the ring's last evicted entry
	ring  []ringEntry
	at    retain.Pos // where catch-up reads next

	saveMu sync.Mutex // orders checkpoints and the final save
	saved  retain.Pos // the position last saved; guarded by saveMu
}

// deliver is the publish path: to a retained channel's log and live
// subscribers under the log's lock, or to the subscribers alone.
func (b *Broker) deliver(t *topic, raw []byte, payload int, from *conn) int {
	rc := t.ret
	if rc == nil {
		return t.publish(raw, payload, from)
	}
	rc.Lock()
	rc.Append(raw)
	n := t.publish(raw, payload, from)
	rc.Unlock()
	return n
}

// retainChannel is channel's log, or nil if it is not retained.
func (b *Broker) retainChannel(channel string) *retain.Channel {
	if b.cfg.Retain == nil {
		return nil
	}
	return b.cfg.Retain.Channel(channel)
}

// subscribeRetained subscribes c to t if t is retained, catching up from
// the ident's position first; it reports false for a channel that is not.
func (c *conn) subscribeRetained(t *topic) bool {
	rc, b := t.ret, c.b
	if rc == nil {
		return false
	}
	rs := &retainSub{c: c, t: t, ident: c.sess.Load().identStr}
	b.ret.mu.Lock()
	if b.ret.conns == nil {
		b.ret.conns = map[*conn]*retainConn{}
	}
	rcn := b.ret.conns[c]
	if rcn == nil {
		rcn = &retainConn{sock: dupSocket(c)}
		b.ret.conns[c] = rcn
	}
	rcn.subs = append(rcn.subs, rs)
	b.ret.mu.Unlock()
	b.ret.once.Do(func() { b.wg.Add(1); go b.checkpointLoop() })
	ctx, cancel := context.WithTimeout(b.ctx, b.cfg.LookupTimeout)
	p, ok, err := b.cfg.Retain.Resume(ctx, rs.ident, rc)
	cancel()
	switch {
	case errors.Is(err, retain.ErrBadPosition):
		c.log().Warn("retained channel: no resume position; starting live", "channel", t.name, "err", err)
	case err != nil:
		c.log().Warn("retained channel: no resume position; starting live, and sending what it missed once the store answers",
			"channel", t.name, "err", err)
		rs.awaitStore(retain.Pos{}, true)
		return true
	}
	if !ok {
		rs.goLive(retain.Pos{}, true)
		return true
	}
	rs.start, rs.at = p, p
	b.wg.Add(1)
	go func() { defer b.wg.Done(); rs.catchUp(p) }()
	return true
}

// catchUp sends the stored frames from p on, one batch whenever the queue
// has drained under catchUpMark and the memory budget allows, then
// switches to live delivery.
func (rs *retainSub) catchUp(p retain.Pos) {
	c, rc := rs.c, rs.t.ret
	c.b.ret.catching.Add(1)
	defer c.b.ret.catching.Add(-1)
	for rs.waitRoom() {
		ctx, cancel := context.WithTimeout(c.b.ctx, 10*time.Second)
		s, found, err := rc.Read(ctx, p)
		cancel()
		if err != nil {
			c.log().Warn("retained channel: reading the store failed; going live, and sending the rest once the store answers",
				"channel", rs.t.name, "err", err)
			rs.awaitStore(p, false)
			return
		}
		if !found {
			if rs.goLive(p, false) {
				return
			}
			continue
		}
		if !rs.paced(s.Frames) {
			return
		}
		rs.remember(s.Pos)
		rs.push(s.Frames) // copies them: the batch's buffer serves the next Read
		s.Release()
		c.b.cfg.Retain.Replayed.Add(uint64(len(s.Frames)))
		p = s.Next
		rs.mu.Lock()
		rs.at = p
		rs.mu.Unlock()
	}
}

// paced waits for frames' turn under the replay rate; false at shutdown.
func (rs *retainSub) paced(frames [][]byte) bool {
	d := rs.c.b.ret.pace.reserve(time.Now(), frameBytes(frames), rs.c.b.cfg.Retain.ReplayRate())
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-rs.c.b.ctx.Done():
		return false
	}
}

// waitRoom waits until the queue and the memory budget have room for a
// batch; false once the subscription or connection is closing.
func (rs *retainSub) waitRoom() bool {
	q, m := &rs.c.q, &rs.c.b.mem
	for !rs.closed.Load() && !rs.c.closing() && !q.dropped.Load() {
		if !q.waitDrained(catchUpMark, 100*time.Millisecond) {
			continue
		}
		if m.limit == 0 || m.used.Load() < m.publisherPause {
			return true
		}
		time.Sleep(time.Millisecond)
	}
	return false
}

// push queues frames, under one taking of the queue's lock; the queue
// copies each and charges the budget.
func (rs *retainSub) push(frames [][]byte) {
	if _, tooSlow := rs.c.q.pushAll(frames, 0, false, nil); tooSlow {
		rs.c.q.logTooSlow("send queue hard bound reached")
	}
}

// goLive sends what the log holds past p that the store has not yet
// acknowledged and adds the subscriber to the channel, unless the store
// holds more to read first (false) and force is unset.
func (rs *retainSub) goLive(p retain.Pos, force bool) bool {
	rc, t, c := rs.t.ret, rs.t, rs.c
	rc.Lock()
	if rs.closed.Load() {
		rc.Unlock()
		return true
	}
	frames, ok := rc.Tail(p)
	if !ok && !force {
		rc.Unlock()
		return false
	}
	rs.liveAt = c.q.pushedBytes()
	if ok && p != (retain.Pos{}) {
		rs.push(frames)
	}
	first := t.add(c)
	rs.live = true
	rc.Unlock()
	if first {
		c.b.interestChanged(t.name)
	}
	return true
}

// awaitStoreMax bounds the wait between awaitStore's tries.
const awaitStoreMax = time.Minute

// awaitStore puts rs live without what it missed, as the store did not
// answer, and tries the store again, waiting longer each time: once it
// answers, rs leaves the channel and catches up from p (from its saved
// position if lookup), then goes live again. So nothing stored is lost,
// but what it missed comes after the live messages it got meanwhile, and
// those the store kept before it answered again are sent twice.
func (rs *retainSub) awaitStore(p retain.Pos, lookup bool) {
	rc, b := rs.t.ret, rs.c.b
	rc.Lock()
	rs.pending = true
	rc.Unlock()
	rs.goLive(p, true)
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for wait := time.Second; ; wait = min(2*wait, awaitStoreMax) {
			t := time.NewTimer(wait)
			select {
			case <-b.ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			if rs.closed.Load() {
				return
			}
			from, ok, err := rs.askStore(p, lookup)
			if err != nil {
				continue
			}
			if rs.leaveForCatchUp(from, ok) {
				rs.catchUp(from)
			}
			return
		}
	}()
}

// askStore asks the store what awaitStore waits for: rs's saved position
// (ok false: none, start live), or, without lookup, whether the read that
// failed at p works now, so rs leaves the channel only once it does.
func (rs *retainSub) askStore(p retain.Pos, lookup bool) (retain.Pos, bool, error) {
	b := rs.c.b
	ctx, cancel := context.WithTimeout(b.ctx, b.cfg.LookupTimeout)
	defer cancel()
	if !lookup {
		s, _, err := rs.t.ret.Read(ctx, p)
		s.Release()
		return p, true, err
	}
	from, ok, err := b.cfg.Retain.Resume(ctx, rs.ident, rs.t.ret)
	if errors.Is(err, retain.ErrBadPosition) {
		return from, false, nil
	}
	return from, ok, err
}

// leaveForCatchUp ends rs's pending wait: with a position to catch up
// from (ok), it takes rs off the channel to catch up from p.
func (rs *retainSub) leaveForCatchUp(p retain.Pos, ok bool) bool {
	rc, t, c := rs.t.ret, rs.t, rs.c
	rc.Lock()
	if rs.closed.Load() {
		rc.Unlock()
		return false
	}
	rs.pending = false
	if !ok { // no saved position: live was right
		rc.Unlock()
		return false
	}
	rs.live = false
	last := t.remove(c)
	rs.mu.Lock()
	rs.start, rs.at, rs.ring = p, p, rs.ring[:0]
	rs.mu.Unlock()
	rc.Unlock()
	if last {
		c.b.interestChanged(t.name)
	}
	c.log().Info("retained channel: the store answers again; sending what the subscriber missed", "channel", t.name)
	return true
}

func (rs *retainSub) remember(p retain.Pos) {
	off := rs.c.q.pushedBytes()
	rs.mu.Lock()
	if len(rs.ring) == catchUpRing {
		rs.start = rs.ring[0].pos
		rs.ring = append(rs.ring[:0], rs.ring[1:]...)
	}
	rs.ring = append(rs.ring, ringEntry{off, p})
	rs.mu.Unlock()
}

// caughtUpTo is where catch-up resumes when the peer acknowledged acked
// bytes: the start of the stored batch it was in.
func (rs *retainSub) caughtUpTo(acked int64) retain.Pos {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	p := rs.start
	for _, e := range rs.ring {
		if e.off > acked {
			break
		}
		p = e.pos
	}
	return p
}

// pushedBytes is every byte ever pushed to the queue, queued or refused.
func (q *sendQueue) pushedBytes() int64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.pushed
}

// retainEnd ends c's retained subscriptions (only t's, if t is set) and
// saves each one's position: the first frame the peer did not acknowledge.
func (b *Broker) retainEnd(c *conn, t *topic) {
	b.ret.mu.Lock()
	rcn := b.ret.conns[c]
	if rcn == nil {
		b.ret.mu.Unlock()
		return
	}
	var ending, keep []*retainSub
	for _, rs := range rcn.subs {
		if t == nil || rs.t == t {
			ending = append(ending, rs)
		} else {
			keep = append(keep, rs)
		}
	}
	rcn.subs = keep
	if len(keep) == 0 {
		delete(b.ret.conns, c)
	}
	last := make([]bool, len(ending))
	for i, rs := range ending {
		last[i] = !b.ret.sharedLocked(rs)
	}
	b.ret.mu.Unlock()
	if len(ending) == 0 {
		return
	}
	pushed := c.q.pushedBytes()
	acked := ackedOffset(c, rcn.sock, infoLen(b.cfg.Name))
	for i, rs := range ending {
		rs.end(pushed, acked, last[i])
	}
	if len(keep) == 0 {
		// After end: a checkpoint that reads the number once reused
		// finds its subscriptions closed and saves nothing.
		closeSocket(rcn.sock)
	}
}

// sharedLocked reports whether another connection of rs's ident is
// subscribed to its channel: the ident's connections share one position,
// written by the last to leave (docs/retention.md). Called with mu held.
func (s *retainState) sharedLocked(rs *retainSub) bool {
	for _, rcn := range s.conns {
		for _, o := range rcn.subs {
			if o != rs && o.t == rs.t && o.ident == rs.ident {
				return true
			}
		}
	}
	return false
}

// end closes the subscription and, if it is its ident's last in the
// channel, saves its position in the background.
func (rs *retainSub) end(pushed, acked int64, save bool) {
	rc, t, b := rs.t.ret, rs.t, rs.c.b
	rc.Lock()
	rs.closed.Store(true)
	last := t.remove(rs.c)
	m, p, live, ok := rs.markLocked(pushed, acked)
	rc.Unlock()
	if last {
		b.interestChanged(t.name)
	}
	if !save || !ok {
		return
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		rs.save(m, p, live, true)
	}()
}

// markLocked is where rs resumes when the peer acknowledged acked of the
// pushed bytes: a mark in the log once live, else a stored position; ok
// false while it waits for the store (pending), when nothing is to be
// saved. The caller holds the log's lock.
func (rs *retainSub) markLocked(pushed, acked int64) (m retain.Mark, p retain.Pos, live, ok bool) {
	if rs.pending {
		return m, p, false, false
	}
	if rs.live && acked >= rs.liveAt {
		return rs.t.ret.Back(int(max(0, pushed-acked))), p, true, true
	}
	return m, rs.caughtUpTo(acked), false, true
}

// save stores the position; a checkpoint's (final unset) is skipped once
// the subscription has ended, so it never overwrites the final one.
func (rs *retainSub) save(m retain.Mark, p retain.Pos, live, final bool) {
	b := rs.c.b
	rs.saveMu.Lock()
	defer rs.saveMu.Unlock()
	if !final && rs.closed.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if live {
		var err error
		if p, err = rs.t.ret.Resolve(ctx, m); err != nil {
			b.cfg.Logger.Warn("retained channel: position not saved", "ident", rs.ident, "channel", rs.t.name, "err", err)
			return
		}
	}
	if p == rs.saved {
		return
	}
	if err := b.cfg.Retain.Save(ctx, rs.ident, rs.t.name, p); err != nil {
		b.cfg.Logger.Warn("retained channel: position not saved", "ident", rs.ident, "err", err)
		return
	}
	rs.saved = p
}

// checkpointEvery is how often the positions of open retained
// subscriptions are saved, so a broker killed with kill -9 resumes its
// subscribers at most this far back.
const checkpointEvery = time.Second

// checkpointLoop saves the open subscriptions' positions until shutdown.
func (b *Broker) checkpointLoop() {
	defer b.wg.Done()
	tick := time.NewTicker(checkpointEvery)
	defer tick.Stop()
	for {
		select {
		case <-b.ctx.Done():
			return
		case <-tick.C:
		}
		b.checkpoint()
	}
}

// checkpoint saves each open subscription's position; of an ident's
// connections to a channel, the earliest's.
func (b *Broker) checkpoint() {
	type open struct {
		c   *conn
		rcn retainConn
	}
	b.ret.mu.Lock()
	conns := make([]open, 0, len(b.ret.conns))
	for c, rcn := range b.ret.conns {
		conns = append(conns, open{c, retainConn{subs: slices.Clone(rcn.subs), sock: rcn.sock}})
	}
	b.ret.mu.Unlock()
	slices.SortFunc(conns, func(x, y open) int { return cmp.Compare(x.c.id, y.c.id) })
	done := map[[2]string]bool{}
	for _, o := range conns {
		pushed := o.c.q.pushedBytes()
		acked := ackedOffset(o.c, o.rcn.sock, infoLen(b.cfg.Name))
		for _, rs := range o.rcn.subs {
			if key := [2]string{rs.ident, rs.t.name}; !done[key] {
				done[key] = true
				rs.t.ret.Lock()
				m, p, live, ok := rs.markLocked(pushed, acked)
				rs.t.ret.Unlock()
				if ok {
					rs.save(m, p, live, false)
				}
			}
		}
	}
}

// infoLen is the size of the INFO frame that precedes the queue's bytes
// on the socket.
func infoLen(name string) int64 {
	return int64(wire.HeaderLen + 1 + len(name) + wire.NonceLen)
}
