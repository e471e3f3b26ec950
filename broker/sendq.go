package broker

import (
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/hpfeeds-go/hpfeeds/wire"
)

// sendQueue is a connection's outgoing frames. Publishers push under a mutex
// held for a few instructions; the writer goroutine swaps the whole queue
// out and writes it without the lock, so a slow client never blocks a
// publisher. The queue is bounded in bytes (see Config.SendQueue*).
//
// The writer goroutine runs only while there is something to write, and
// lingers writerIdle before exiting: an idle subscriber costs no goroutine
// and a busy one never starts a goroutine per message.
type sendQueue struct {
	c *conn

	mu     sync.Mutex
	frames [][]byte // held frames (isHeld; a shared one may be a run, see framesIn), or copies in chunk
	// Frames copied for this subscriber alone (copyLocked) are written
	// side by side into chunk; chunks lists the chunks (takeBuf's) that
	// frames use, which the writer gives back once it has written them.
	chunk  []byte
	chunks []unsafe.Pointer
	queued int   // bytes pushed and not yet written
	pushed int64 // every byte pushed, queued or refused (retain.go)
	// Counted here, under the lock push holds anyway, rather than as
	// atomics beside the writer's counters: no extra shared cache line
	// per delivery.
	fill      uint64 // payload bytes pushed, queued or refused (as the reference counts)
	delivered uint64 // frames queued
	// pusher is the one publisher whose frames are queued, or mixed is
	// set: frames of several publishers are left to the writer
	// goroutine, which gathers them into fewer writes (flushInline).
	pusher *conn
	mixed  bool
	// inflight is the part of queued in the batch being written: after
	// a drop it is still held, by a write that may block for the flush
	// timeout, and stays in the memory budget until the writer lets go.
	inflight int
	running  bool // a writer goroutine exists
	awake    bool // the writer has been signalled and not yet run
	closing  bool // no more pushes; the writer finishes and closes
	// usedAt is the broker clock at the last batch that used an eighth
	// of its array or more (doneLocked).
	usedAt int64
	last   []byte      // written after the queue, before closing (an ERROR)
	timer  *time.Timer // the backpressure deadline, while past the soft mark
	// stall is closed when the queue drains to half the stall mark; it
	// exists while the queue is past the mark, and publishers into it
	// wait on it (briefly) before reading more (see conn.stall). Past
	// Config.StallTimeout, stallTimer closes the subscriber: a slow
	// subscriber holds its publishers for that long at most.
	stall      chan struct{}
	stallTimer *time.Timer
	// drained is closed when queued drops to drainMark (waitDrained).
	drained   chan struct{}
	drainMark int

	// writingSince is the broker clock when the write in progress began,
	// 0 between writes: the budget evicts a subscriber that is reading
	// last (evictLargest).
	writingSince atomic.Int64

	dropped atomic.Bool // the queue was thrown away: stop writing it
	wake    chan struct{}
	done    chan struct{} // closed when the writer has closed the socket

	// writing is set while a batch is being written, by the writer
	// goroutine or by a publisher flushing inline (flushInline): one
	// writer at a time. Guarded by mu, as are carry and spare.
	writing bool
	// carry is what an inline flush left unwritten, the first frame from
	// carrySkip on, with the chunks its frames use: the writer goroutine
	// writes it before anything queued after it.
	carry       [][]byte
	carrySkip   int
	carryChunks []unsafe.Pointer
	// spare and spareChunks are the arrays the next batch taken leaves
	// behind for new frames, so that a busy queue reuses two of each.
	spare       [][]byte
	spareChunks []unsafe.Pointer

	// The writer's own state (whoever holds writing), kept between its
	// runs while it is busy.
	iov  [][]byte    // backing array for bufs
	bufs net.Buffers // the writev in progress; WriteTo consumes it
	// raw is the plain TCP socket, which a publisher may write to inline
	// without blocking (flushInline); nil over TLS or off Linux.
	raw syscall.RawConn
	nbw *nonBlockingWrite // made at the first inline flush
}

// arrayKept is how long a batch's array is kept while no batch uses an
// eighth of it (doneLocked).
const arrayKept = time.Second

// writerIdle is how long a writer with nothing to write waits before its
// goroutine exits.
const writerIdle = 2 * time.Second

func (q *sendQueue) init(c *conn) {
	q.c = c
	q.wake = make(chan struct{}, 1)
	q.done = make(chan struct{})
	if tc, ok := c.nc.(*net.TCPConn); ok && inlineFlush {
		q.raw, _ = tc.SyscallConn()
	}
}

// kickLocked makes sure a writer will look at the queue: it reports whether
// the caller must start one, or wake the one that is waiting.
func (q *sendQueue) kickLocked() (start, wake bool) {
	if !q.running {
		q.running, q.awake = true, true
		return true, false
	}
	if !q.awake {
		q.awake = true
		return false, true
	}
	return false, false
}

// kick acts on kickLocked's answer, after the lock is released.
func (q *sendQueue) kick(start, wake bool) {
	if start {
		go q.c.writeLoop()
	} else if wake {
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
}

// wakeup is a writer to start or wake once the publisher has read all it
// has: one wake-up per batch of frames, not per frame.
type wakeup struct {
	q     *sendQueue
	start bool
}

// push queues frame, a PUBLISH with payload bytes of payload, to this
// subscriber; it never blocks on I/O. With sh
// set the frame is shared, exactly as memBudget.share returned it (its
// count is in front of it, see sharedFrame; the caller counts the queues
// that took it for unshare); without, the queue copies it and charges the
// copy. With a publishing connection from, the writer's wake-up and the queue's stall
// are left for from to act on before its next read; without one (frames
// from the cluster, catch-up) the writer is woken now. It reports whether
// the frame was queued, and whether it took the queue past its hard bound,
// closing the subscriber: the caller logs it (logTooSlow) once it holds no
// lock.
func (q *sendQueue) push(frame []byte, payload int, sh *sharedFrame, from *conn) (queued, tooSlow bool) {
	one := [1][]byte{frame}
	return q.pushAll(one[:], payload, sh != nil, from)
}

// pushAll is push for several frames at once, all shared or all to copy,
// with payload bytes of payload together (a shared frame may be a run of
// PUBLISH frames, see conn.fanOut): one taking of the lock for a
// publisher's burst to one subscriber (conn.fanIn) or a stored batch.
func (q *sendQueue) pushAll(frames [][]byte, payload int, shared bool, from *conn) (queued, tooSlow bool) {
	c := q.c
	cfg := &c.b.cfg
	n := frameBytes(frames)
	count := len(frames)
	if shared {
		// Only a held frame carries its count: a frame to copy may end
		// where its buffer does, and so look held (isHeld).
		count = framesIn(frames)
	}
	q.mu.Lock()
	q.pushed += int64(n)
	q.fill += uint64(payload)
	if q.closing {
		q.mu.Unlock()
		return false, false
	}
	if shared {
		q.frames = append(q.frames, frames...)
	} else {
		for _, f := range frames {
			q.frames = append(q.frames, q.copyLocked(f))
		}
		if from != nil {
			from.chargeCopy(n)
		} else {
			c.b.mem.charge(n)
		}
	}
	q.queued += n
	q.delivered += uint64(count)
	if q.pusher != from {
		if q.pusher == nil {
			q.pusher = from
		} else {
			q.mixed = true
		}
	}
	failed := false
	if q.queued > cfg.SendQueueHard {
		q.failLocked(BackpressureHardBound)
		failed = true
	} else if q.queued > cfg.SendQueueSoft && q.timer == nil {
		q.timer = time.AfterFunc(cfg.BackpressureDeadline, q.deadlineExpired)
		c.stats.deadlineStarts.Add(1)
	}
	if q.queued > cfg.StallMark && q.stall == nil && !failed {
		q.stall = make(chan struct{})
		if cfg.StallTimeout > 0 {
			q.stallTimer = time.AfterFunc(cfg.StallTimeout, q.stallExpired)
		}
	}
	stall := q.stall
	start, wake := q.kickLocked()
	q.mu.Unlock()
	if from != nil {
		if start || wake {
			from.later = append(from.later, wakeup{q, start})
		}
		if stall != nil {
			from.noteStall(stall)
		}
	} else {
		q.kick(start, wake)
	}
	return true, failed
}

// waitDrained waits until at most mark bytes are queued, for at most d,
// and reports whether they were; false too once the queue was thrown away
// (the subscriber closed for backpressure). One caller at a time: it is
// for a goroutine feeding this subscriber (a catch-up) that must not
// outrun it.
func (q *sendQueue) waitDrained(mark int, d time.Duration) bool {
	q.mu.Lock()
	if drained := q.queued <= mark; drained || q.closing {
		q.mu.Unlock()
		return drained && !q.dropped.Load()
	}
	ch := make(chan struct{})
	q.drained, q.drainMark = ch, mark
	q.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return !q.dropped.Load()
	case <-t.C:
		q.mu.Lock()
		if q.drained == ch {
			q.drained = nil
		}
		q.mu.Unlock()
		return false
	}
}

// queuedBytes is what this subscriber's queue holds, written or not.
func (q *sendQueue) queuedBytes() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.queued
}

// copyLocked copies a frame for this queue alone: while frames are waiting
// and it is at most copyMax bytes, into the queue's chunk, so a burst of
// fan-in to one subscriber allocates nothing per message and the writer
// sends the frames from the chunk, side by side, without copying them
// again (see writeFrames); otherwise into a frame held by this queue alone.
func (q *sendQueue) copyLocked(raw []byte) []byte {
	// A frame in the chunk keeps a byte of room after it: that tells it
	// from a held frame (isHeld).
	full := cap(q.chunk)-len(q.chunk) <= len(raw)
	if full && len(q.frames) == 0 || len(raw) > copyMax {
		// Nothing waiting: a burst is not building, and a 64 KiB chunk
		// for one frame would hold far more than the budget counts.
		return q.holdAlone(raw)
	}
	if full {
		p := takeBuf(chunkClass)
		if p == nil {
			return q.holdAlone(raw)
		}
		q.chunk = unsafe.Slice((*byte)(p), scratchSize)[:0]
		q.chunks = append(q.chunks, p)
	}
	start := len(q.chunk)
	q.chunk = append(q.chunk, raw...)
	// Its capacity runs to the chunk's end: writeFrames finds the frame
	// that follows it there.
	return q.chunk[start:len(q.chunk)]
}

// holdAlone copies raw into a frame held by this queue alone.
func (q *sendQueue) holdAlone(raw []byte) []byte {
	f := newHeld(raw, 1)
	q.c.b.mem.charge(heldSize(f) - len(f)) // the rest of its buffer
	return f
}

// releaseChunks gives chunks back (putBuf); nothing may use them after.
func releaseChunks(chunks []unsafe.Pointer) {
	for i, p := range chunks {
		putBuf(p, chunkClass)
		chunks[i] = nil
	}
}

// logTooSlow says why a subscriber is being closed for backpressure.
func (q *sendQueue) logTooSlow(reason string) {
	q.c.log().Warn("subscriber too slow; closing it", "error", wire.ErrBackpressure, "reason", reason)
}

func (q *sendQueue) deadlineExpired() {
	q.expired(&q.timer, BackpressureDeadline, "backpressure deadline expired")
}

// stallExpired closes a subscriber that held its publishers for
// StallTimeout without draining to half the stall mark.
func (q *sendQueue) stallExpired() {
	q.expired(&q.stallTimer, BackpressureStalled, "stalled its publishers for the stall timeout without draining")
}

// expired closes the subscriber for reason once timer fired, unless the
// timer was stopped meanwhile or the queue is closing.
func (q *sendQueue) expired(timer **time.Timer, reason, why string) {
	q.mu.Lock()
	if q.closing || *timer == nil {
		q.mu.Unlock()
		return
	}
	q.failLocked(reason)
	start, wake := q.kickLocked()
	q.mu.Unlock()
	q.kick(start, wake)
	q.logTooSlow(why)
}

// stopTimers stops the backpressure and stall deadlines.
func (q *sendQueue) stopTimers() {
	if q.timer != nil {
		q.timer.Stop()
		q.timer = nil
	}
	if q.stallTimer != nil {
		q.stallTimer.Stop()
		q.stallTimer = nil
	}
}

// failLocked closes a subscriber that is too slow: what it has not been
// sent is dropped, and it gets the backpressure error once the write in
// progress (if any) completes, within the flush timeout.
func (q *sendQueue) failLocked(reason string) {
	c := q.c
	q.dropLocked()
	q.last = wire.AppendError(nil, wire.ErrBackpressure)
	q.stopTimers()
	c.nc.SetWriteDeadline(time.Now().Add(c.b.cfg.FlushTimeout))
	ident := ""
	if s := c.sess.Load(); s != nil {
		ident = s.identStr
	}
	c.b.stats.backpressureClose(ident, reason)
	c.close(closedSlowConsumer, "too slow: "+reason, nil)
}

// dropLocked throws the queue away: nothing more is pushed or written, its
// bytes leave the memory budget, and publishers waiting on it go on.
func (q *sendQueue) dropLocked() {
	q.closing = true
	q.dropped.Store(true)
	q.c.b.mem.releaseFrames(q.frames)
	clear(q.frames)
	q.frames = q.frames[:0]
	releaseChunks(q.chunks)
	q.chunks, q.chunk = q.chunks[:0], nil
	if q.carry != nil {
		q.c.b.mem.releaseFrames(q.carry)
		clear(q.carry)
		releaseChunks(q.carryChunks)
		q.carry, q.carrySkip, q.carryChunks = nil, 0, nil
	}
	q.c.b.mem.releasing.Add(int64(q.inflight))
	q.queued = q.inflight
	q.unstallLocked()
	if q.drained != nil {
		close(q.drained)
		q.drained = nil
	}
}

// unstallLocked lets the publishers waiting on this queue go on.
func (q *sendQueue) unstallLocked() {
	if q.stall != nil {
		close(q.stall)
		q.stall = nil
	}
	if q.stallTimer != nil {
		q.stallTimer.Stop()
		q.stallTimer = nil
	}
}

// closeWith writes what is queued, then frame, then closes.
func (q *sendQueue) closeWith(frame []byte) {
	q.mu.Lock()
	if q.closing {
		q.mu.Unlock()
		return
	}
	q.closing = true
	q.last = frame
	q.c.nc.SetWriteDeadline(time.Now().Add(q.c.b.cfg.FlushTimeout))
	start, wake := q.kickLocked()
	q.mu.Unlock()
	q.kick(start, wake)
}

// abort closes at once, dropping what is queued, unless a close is already
// under way.
func (q *sendQueue) abort() {
	q.mu.Lock()
	if !q.closing {
		q.dropLocked()
		q.c.nc.Close()
	}
	q.stopTimers()
	start, wake := q.kickLocked()
	q.mu.Unlock()
	q.kick(start, wake)
}

// written accounts for frames, n bytes, that the writer wrote or let go:
// they leave the queue and the memory budget. Back under the low mark the
// backpressure deadline is cancelled, under half the stall mark the
// publishers go on.
func (q *sendQueue) written(frames [][]byte, n int) {
	cfg := &q.c.b.cfg
	q.c.b.mem.releaseFrames(frames)
	q.mu.Lock()
	q.queued -= n
	q.inflight -= n
	if q.dropped.Load() {
		q.c.b.mem.releasing.Add(-int64(n))
	}
	if q.timer != nil && q.queued <= cfg.SendQueueLow {
		q.timer.Stop()
		q.timer = nil
		q.c.stats.deadlineRecovers.Add(1)
	}
	if q.queued <= cfg.StallMark/2 {
		q.unstallLocked()
	}
	if q.drained != nil && q.queued <= q.drainMark {
		close(q.drained)
		q.drained = nil
	}
	q.mu.Unlock()
}

// writeLoop is the connection's writer goroutine. It exits when the
// connection closes (closing the socket and q.done) or after writerIdle
// with nothing to write.
func (c *conn) writeLoop() {
	q := &c.q
	var idle *time.Timer
	expired := false
	var batch [][]byte // written, to hand back under the next lock
	var chunks []unsafe.Pointer
	for {
		q.mu.Lock()
		if batch != nil {
			q.doneLocked(batch, chunks)
			batch, chunks = nil, nil
		}
		q.awake = false
		closing, last := q.closing, q.last
		if q.writing || !closing && q.carry == nil && len(q.frames) == 0 {
			// Nothing to write, or a publisher is writing inline and
			// wakes this writer if it leaves anything.
			if expired && !q.writing {
				// Idle: release everything a burst grew.
				q.running = false
				q.frames, q.spare, q.iov, q.bufs = nil, nil, nil, nil
				q.mu.Unlock()
				return
			}
			q.mu.Unlock()
			if idle == nil {
				idle = time.NewTimer(writerIdle)
			} else {
				idle.Reset(writerIdle)
			}
			select {
			case <-q.wake:
			case <-idle.C:
				expired = true
			}
			continue
		}
		carried := q.carry != nil
		var skip int
		batch, skip, chunks = q.takeLocked()
		q.mu.Unlock()
		expired = false

		var err error
		if len(batch) > 0 {
			var rest [][]byte
			rest, _, err = c.writeFrames(batch, skip, false)
			if len(rest) > 0 { // dropped, or a failed write
				q.written(rest, frameBytes(rest))
			}
		}
		if batch == nil {
			batch = [][]byte{} // still handed back: it ends the writing
		}
		if carried && closing && err == nil {
			continue // what was queued after the carry goes before the close
		}
		if err != nil || closing {
			if err == nil && last != nil {
				n, _ := c.nc.Write(last)
				c.stats.sentBytes.Add(uint64(n))
				c.stats.writes.Add(1)
				if n == len(last) {
					c.stats.sentFrames.Add(1)
				}
			}
			c.nc.Close()
			q.mu.Lock()
			q.doneLocked(batch, chunks)
			q.dropLocked() // a failed write ends the connection too
			q.frames = nil
			q.mu.Unlock()
			if idle != nil {
				idle.Stop()
			}
			close(q.done)
			return
		}
	}
}

// takeLocked takes the next batch to write, and the chunks its frames
// use: what an inline flush left, else everything queued. Until
// doneLocked the caller alone writes.
func (q *sendQueue) takeLocked() (batch [][]byte, skip int, chunks []unsafe.Pointer) {
	if q.carry != nil {
		batch, skip, chunks = q.carry, q.carrySkip, q.carryChunks
		q.carry, q.carrySkip, q.carryChunks = nil, 0, nil
		q.inflight = frameBytes(batch)
	} else {
		batch, q.frames, q.spare = q.frames, q.spare[:0], nil
		q.pusher, q.mixed = nil, false
		// New frames go to a new chunk while these are written.
		chunks, q.chunks, q.chunk, q.spareChunks = q.chunks, q.spareChunks[:0], nil, nil
		q.inflight = q.queued
	}
	q.writing = true
	return batch, skip, chunks
}

// doneLocked ends the writing of batch, all of it written or let go: its
// chunks are given back (putBuf) and its arrays are kept for the next batch,
// unless the burst that grew them is over: no batch used an eighth of its
// array for arrayKept. One small batch does not tell: a burst into a
// stalled queue alternates large batches and runs of small ones, and
// letting the array go at each small one had it grown again, from
// nothing, several times a second (unpaced 50→1: 97 MB of arrays
// allocated for 1.6 million messages).
func (q *sendQueue) doneLocked(batch [][]byte, chunks []unsafe.Pointer) {
	q.writing = false
	releaseChunks(chunks)
	q.spareChunks = chunks[:0]
	n := len(batch)
	clear(batch)
	now := q.c.b.clock.Load()
	if cap(batch) <= 1024 || n >= cap(batch)/8 {
		q.usedAt = now
	} else if now-q.usedAt >= int64(arrayKept) {
		batch = nil // don't pin it
	}
	q.spare = batch[:0]
}

// flushInline is the publisher's shortcut past the writer goroutine:
// after a read whose frames went to this queue alone, from this
// publisher alone, the publisher writes one round of what is queued,
// without blocking, on the core whose caches hold the frames, and leaves
// the rest to the writer goroutine. Handing every batch to a goroutine on
// the other core cost a quarter of the CPU per delivery on one-to-one
// loads (docs/performance.md). start is the wake-up's (see wakeup): whether the publisher
// would have had to start that goroutine. It reports whether it acted on
// the wake-up; if not (another write is under way, or the socket is not
// plain TCP), the caller kicks the writer as usual.
func (q *sendQueue) flushInline(start bool) bool {
	if q.raw == nil {
		return false
	}
	q.mu.Lock()
	// More than a round (a large frame, or a backlog the socket is
	// unlikely to take) is the writer goroutine's, which may block.
	if q.writing || q.closing || q.carry != nil || q.mixed || len(q.frames) == 0 || q.queued > roundMax {
		q.mu.Unlock()
		return false
	}
	batch, _, chunks := q.takeLocked()
	q.mu.Unlock()
	// A write that failed is met again by the writer goroutine, which
	// ends the connection: what is left goes to it either way.
	rest, skip, _ := q.c.writeFrames(batch, 0, true)
	if len(rest) > 0 && q.dropped.Load() {
		q.written(rest, frameBytes(rest))
		rest = nil
	}
	q.mu.Lock()
	if len(rest) > 0 {
		clear(batch[:len(batch)-len(rest)]) // written: don't pin them
		q.carry, q.carrySkip, q.carryChunks = rest, skip, chunks
		q.writing = false // batch's array and chunks go with carry
	} else {
		q.doneLocked(batch, chunks)
	}
	left := q.carry != nil || len(q.frames) > 0 || q.closing
	var wake bool
	switch {
	case !left:
		// The writer, if one runs, was not signalled: pushes must
		// signal it again.
		q.awake = false
		if start {
			q.running = false
		}
	case start:
	case !q.running:
		q.running, start = true, true
	default:
		q.awake, wake = true, true
	}
	q.mu.Unlock()
	if left {
		q.kick(start, wake)
	}
	return true
}

const (
	// Frames up to copyMax bytes are copied into one buffer so many small
	// frames leave in one write; larger ones are written from where they
	// are, as their own iovec.
	copyMax     = 4 << 10
	scratchSize = 64 << 10
	// roundMax bounds one writev, so a queue thrown away for backpressure
	// stops being written within one round.
	roundMax = 256 << 10
)

// scratchPool holds 64 KiB buffers: the writer's copy of small shared
// frames (the chunks frames are copied into for one subscriber are
// takeBuf's).
var scratchPool = sync.Pool{New: func() any { b := make([]byte, 0, scratchSize); return &b }}

// adjacent reports whether b starts where a ends, in the same array.
func adjacent(a, b []byte) bool {
	return len(b) > 0 && cap(a) > len(a) && &a[:len(a)+1][len(a)] == &b[0]
}

// frameBytes is the length of frames together.
func frameBytes(frames [][]byte) int {
	n := 0
	for _, f := range frames {
		n += len(f)
	}
	return n
}

// writeFrames writes frames, the first from byte skip on, in rounds of at
// most roundMax bytes, releasing each round once written, and returns what
// it did not write (the queue was dropped, or a write failed), the first
// of it from the byte it returns on. With nb (an inline flush) it writes
// one round at most and never waits: what the socket would not take is
// returned too.
func (c *conn) writeFrames(frames [][]byte, skip int, nb bool) ([][]byte, int, error) {
	q := &c.q
	sp := scratchPool.Get().(*[]byte)
	defer scratchPool.Put(sp)
	for len(frames) > 0 && !q.dropped.Load() {
		scratch := (*sp)[:0]
		iov := q.iov[:0]
		seg, n, i := 0, 0, 0
		for ; i < len(frames) && n < roundMax; i++ {
			f := frames[i]
			if i == 0 {
				f = f[skip:] // still held or in a chunk: its end is unchanged
			}
			if len(f) <= copyMax && isHeld(f) { // small and held
				if len(scratch)+len(f) > cap(scratch) {
					break
				}
				scratch = append(scratch, f...)
			} else { // large, or in a chunk of this subscriber's
				if len(scratch) > seg {
					iov = append(iov, scratch[seg:])
					seg = len(scratch)
				}
				if k := len(iov) - 1; k >= 0 && adjacent(iov[k], f) {
					iov[k] = iov[k][:len(iov[k])+len(f)]
				} else {
					iov = append(iov, f)
				}
			}
			n += len(f)
		}
		if len(scratch) > seg {
			iov = append(iov, scratch[seg:])
		}
		q.iov, q.bufs = iov, iov
		q.writingSince.Store(c.b.clock.Load())
		var w int64
		var err error
		if nb {
			w, err = q.writeNow(iov)
		} else {
			w, err = q.bufs.WriteTo(c.nc)
		}
		q.writingSince.Store(0)
		clear(iov) // WriteTo leaves some entries set; don't pin frames
		c.stats.sentBytes.Add(uint64(w))
		c.stats.writes.Add(1)
		if nb && w < int64(n) {
			// The frames the socket took whole are written; the rest,
			// the first perhaps in part, is left.
			k, at := 0, skip+int(w)
			for k < i && at >= len(frames[k]) {
				at -= len(frames[k])
				k++
			}
			c.stats.sentFrames.Add(uint64(framesIn(frames[:k])))
			q.written(frames[:k], frameBytes(frames[:k]))
			return frames[k:], at, err
		}
		sent := framesIn(frames[:i])
		q.written(frames[:i], skip+n)
		frames, skip = frames[i:], 0
		if err != nil {
			return frames, 0, err
		}
		c.stats.sentFrames.Add(uint64(sent))
		if nb {
			break
		}
	}
	return frames, skip, nil
}
