package broker

import (
	"encoding/binary"
	"errors"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/hpfeeds-go/hpfeeds/wire"
)

// MaxStall bounds the one pause a read may get, whatever the subscribers
// do: the reader waits for the stalled subscribers it queued to (all of
// them together, not each in turn) and, while memory is tight, for the
// budget, for at most this long in all, then reads again. A publisher into
// subscribers that never drain therefore still gets a read of up to 4 KiB
// every MaxStall, until Config.StallTimeout closes them. The one longer
// wait is a frame in progress that does not fit its buffer while reader
// buffers hold most of a tight budget (see holdPartial).
const MaxStall = 5 * time.Millisecond

const (
	// maxStallWaits bounds the stalled subscribers one read waits on; as
	// they share one deadline, more would not hold the publisher longer.
	maxStallWaits = 16
	// stalledRead caps the read after a wait that ran out while a
	// subscriber was still past its mark: many publishers into one slow
	// subscriber each get a read every MaxStall, and reads this size keep
	// what they bring in below what the subscriber drains.
	stalledRead = 4 << 10
	// bufferedMin is the reader buffer size from which a connection's
	// buffer counts in the memory budget: idle connections' small buffers
	// don't.
	bufferedMin = 4 << 10
	// stuckAfter is how long a subscriber's write must have been blocked
	// for it to count as not reading, and a frame must have been growing
	// into its buffer to count as a partial frame, when the budget evicts:
	// a publisher's large frame arrives, and a reading subscriber's write
	// completes, well within it.
	stuckAfter = 500 * time.Millisecond
)

// errFrameTimeout ends a connection whose frame was not completed in time.
var errFrameTimeout = errors.New("frame not completed within the frame timeout")

// errRefusedEarly ends the reading of a PUBLISH refused from its header.
var errRefusedEarly = errors.New("PUBLISH refused before its body was read")

// memBudget is the one home of the memory budget: only its methods charge
// and release bytes. It holds the frames in send queues, each counted once
// however many subscribers share it (sharedFrame), and the reader buffers
// of bufferedMin bytes or more, at their capacity. Publishers charge once
// per publish (a shared frame) or once per read (the copies it queues, see
// conn.chargeCopy), writers release once per write: nothing per delivery.
type memBudget struct {
	limit          int64 // zero: no budget, bytes are only counted
	publisherPause int64 // publishers pause from here (three quarters)
	readerPause    int64 // frames that outgrow their buffer pause from here (a quarter)
	used           atomic.Int64
	buffered       atomic.Int64 // the part of used in reader buffers
	// releasing is the part of used that closed subscribers' blocked
	// writes still hold: it goes within the flush timeout, so closing
	// more subscribers for it would not help.
	releasing atomic.Int64

	mu     sync.Mutex
	relief chan struct{} // closed when used drops under publisherPause
	over   chan struct{} // wakes enforceBudget

	frameTimeouts, partialCloses atomic.Uint64
}

func (m *memBudget) init(limit int64) {
	m.limit, m.publisherPause, m.readerPause = limit, limit/4*3, limit/4
	m.over = make(chan struct{}, 1)
}

// charge counts n more bytes held.
func (m *memBudget) charge(n int) {
	if n == 0 {
		return
	}
	if u := m.used.Add(int64(n)); m.limit > 0 && u > m.limit {
		select {
		case m.over <- struct{}{}:
		default:
		}
	}
}

// release counts n bytes let go.
func (m *memBudget) release(n int) {
	if n == 0 {
		return
	}
	u := m.used.Add(-int64(n))
	if m.limit > 0 && u < m.publisherPause && u+int64(n) >= m.publisherPause {
		m.mu.Lock()
		if m.relief != nil {
			close(m.relief)
			m.relief = nil
		}
		m.mu.Unlock()
	}
}

// sharedFrame is the hold of the send queues on one copy of a frame: the
// budget charges the frame once when it is made, and releases it when the
// last queue that took it has written or dropped it. Pushing does not
// touch the count (no shared cache line per delivery): it starts at
// shareBias, each queue takes one off when it lets go, and unshare adds
// how many queues took the frame, less the bias.
//
// The count lives in the frameHeader bytes before the frame, in the same
// allocation (newHeld): a publish allocates once, and a queue entry is the
// frame alone, as small as before the budget counted frames. A held frame
// is one whose capacity is its length; a frame a queue copied into its
// chunk always has room after it (copyLocked).
type sharedFrame struct {
	refs atomic.Int32
	// frames is how many PUBLISH frames the held bytes are: one, or a
	// publisher's run of frames for one channel (conn.fanOut, at most
	// fanOutMax bytes).
	frames uint16
	// class is 1 + the bufSizes class of the buffer the frame is in
	// (takeBuf), 0 for one of the heap's.
	class uint8
}

// shareBias is more holds than any frame gets before unshare.
const shareBias = 1 << 30

// frameHeader is the room for a held frame's sharedFrame.
const frameHeader = 8

// zeroHeader is what a held frame's allocation starts from.
var zeroHeader [frameHeader]byte

// A frame larger than pageAlignFrom starts after a page of headroom, so
// on a page boundary, its count at the page's end: the kernel copied a 1
// MiB frame 8 bytes into a page to the socket about a tenth slower
// (docs/performance.md). In a mapped buffer (frameOffset) the budget
// counts the page with the buffer; on the heap (frames over heldMax, after
// zeroPage) it does not: at most 1/4096 of such a frame.
const pageAlignFrom = 64 << 10

var zeroPage [4096]byte

// newHeld copies raw (never empty) into a held frame whose count starts at
// refs.
func newHeld(raw []byte, refs int32) []byte {
	if k := heldClass(len(raw)); k >= 0 {
		if p := takeBuf(k); p != nil {
			at := frameOffset(k)
			frame := unsafe.Slice((*byte)(p), at+len(raw))[at:]
			copy(frame, raw)
			h := holdOf(frame)
			h.refs.Store(refs)
			h.frames, h.class = 1, uint8(k+1)
			return frame
		}
	}
	header := zeroHeader[:]
	if len(raw) > pageAlignFrom {
		header = zeroPage[:]
	}
	// append, unlike make, does not zero the bytes it copies over: a
	// 1 MiB frame measured 0.3 ms so against 0.8 ms zeroed first.
	buf := append(header, raw...)
	if uintptr(unsafe.Pointer(&buf[0]))%8 != 0 {
		// The allocator aligns blocks of 16 bytes or more; should it
		// not, words are aligned by the language.
		words := make([]uint64, 1+(len(raw)+7)/8)
		buf = unsafe.Slice((*byte)(unsafe.Pointer(&words[0])), frameHeader+len(raw))
		copy(buf[frameHeader:], raw)
		header = buf[:frameHeader]
	}
	frame := buf[len(header):len(buf):len(buf)]
	h := holdOf(frame)
	h.refs.Store(refs)
	h.frames, h.class = 1, 0
	return frame
}

// isHeld reports whether a queued frame was made by newHeld.
func isHeld(frame []byte) bool { return cap(frame) == len(frame) }

// holdOf is a held frame's count.
func holdOf(frame []byte) *sharedFrame {
	return (*sharedFrame)(unsafe.Add(unsafe.Pointer(unsafe.SliceData(frame)), -frameHeader))
}

// share copies raw into a frame to push to queues (sendQueue.push); the
// caller then calls unshare with how many took it.
func (m *memBudget) share(raw []byte) ([]byte, *sharedFrame) {
	frame := newHeld(raw, shareBias)
	m.charge(heldSize(frame))
	return frame, holdOf(frame)
}

// framesIn is how many PUBLISH frames the queued frames are.
func framesIn(frames [][]byte) int {
	n := 0
	for _, f := range frames {
		if isHeld(f) {
			n += int(holdOf(f).frames)
		} else {
			n++
		}
	}
	return n
}

// unshare says taken queues took frame, releasing it if they all have let
// go of it already (or none took it).
func (m *memBudget) unshare(frame []byte, sh *sharedFrame, taken int) {
	if sh.refs.Add(int32(taken)-shareBias) == 0 {
		m.release(heldSize(frame))
		recycle(frame)
	}
}

// releaseFrames lets go of frames a queue wrote or dropped.
func (m *memBudget) releaseFrames(frames [][]byte) {
	n := 0
	for _, f := range frames {
		if !isHeld(f) {
			n += len(f)
		} else if holdOf(f).refs.Add(-1) == 0 {
			n += heldSize(f)
			recycle(f)
		}
	}
	m.release(n)
}

// setBuffer counts c's reader buffer at size bytes (0: not counted).
func (m *memBudget) setBuffer(c *conn, size int64) {
	for {
		// enforceBudget may take the buffer out of the budget meanwhile.
		old := c.buffered.Load()
		if old == size {
			return
		}
		if c.buffered.CompareAndSwap(old, size) {
			m.buffered.Add(size - old)
			if size > old {
				m.charge(int(size - old))
			} else {
				m.release(int(old - size))
			}
			return
		}
	}
}

// overLimit reports whether closing a connection would help the budget.
func (m *memBudget) overLimit() bool {
	return m.limit > 0 && m.used.Load()-m.releasing.Load() > m.limit
}

// readersCrowd reports whether reader buffers hold most of a budget, and
// the buffers of readers other than c alone pass its reader pause mark:
// only frames completing (or closed) free it then. A frame alone, however
// large, is never held by its own buffer.
func (m *memBudget) readersCrowd(c *conn) bool {
	u, buf := m.used.Load(), m.buffered.Load()
	return m.limit > 0 && 2*buf >= u && buf-c.buffered.Load() >= m.readerPause
}

// wait holds the caller until used drops under mark or t fires; only a
// drop under publisherPause wakes it early.
func (m *memBudget) wait(t *time.Timer, mark int64) {
	m.mu.Lock()
	if m.used.Load() < mark {
		m.mu.Unlock()
		return
	}
	if m.relief == nil {
		m.relief = make(chan struct{})
	}
	ch := m.relief
	m.mu.Unlock()
	select {
	case <-ch:
	case <-t.C:
	}
}

// enforceBudget closes connections, one at a time, while the budget is
// exceeded (see evictLargest).
func (b *Broker) enforceBudget() {
	for {
		select {
		case <-b.ctx.Done():
			return
		case <-b.mem.over:
		}
		for b.mem.overLimit() && b.evictLargest() {
		}
	}
}

// holder is a connection and what it holds of the budget.
type holder struct {
	c       *conn
	n       int64
	partial bool // a reader buffer, not a send queue
}

// evictLargest closes the connection holding the most of the budget,
// whatever holds it: first among frames that have been arriving into their
// buffer for stuckAfter and subscribers whose write has been blocked that
// long, then among all the others, so a stale partial frame always goes
// before a subscriber that is reading. It reports whether there was one.
func (b *Broker) evictLargest() bool {
	stuck := b.clock.Load() - int64(stuckAfter)
	var first, then holder
	pick := func(h holder, stale bool) {
		switch {
		case stale && h.n > first.n:
			first = h
		case !stale && h.n > then.n:
			then = h
		}
	}
	b.mu.Lock()
	for c := range b.conns {
		if at := c.outgrownAt.Load(); at != 0 && !c.evicted.Load() {
			pick(holder{c, c.buffered.Load(), true}, at <= stuck)
		}
		q := &c.q
		q.mu.Lock()
		n, closing := int64(q.queued), q.closing
		q.mu.Unlock()
		if n > 0 && !closing {
			at := q.writingSince.Load()
			pick(holder{c, n, false}, at != 0 && at <= stuck)
		}
	}
	b.mu.Unlock()
	h := first
	if h.c == nil {
		h = then
	}
	switch {
	case h.c == nil:
		return false
	case h.partial:
		b.evictPartial(h)
	default:
		b.evictQueue(h)
	}
	return true
}

// evictQueue closes a subscriber with the backpressure error.
func (b *Broker) evictQueue(h holder) {
	q := &h.c.q
	q.mu.Lock()
	if !q.closing {
		q.failLocked(BackpressureMemoryBudget)
	}
	start, wake := q.kickLocked()
	q.mu.Unlock()
	q.kick(start, wake)
	h.c.log().Warn("subscriber holds the most of the memory budget and is over it; closing it",
		"error", wire.ErrBackpressure, "queued", h.n, "budget", b.mem.limit)
}

// evictPartial closes a connection for the frame in progress it holds.
func (b *Broker) evictPartial(h holder) {
	c := h.c
	if !c.evicted.CompareAndSwap(false, true) {
		return
	}
	// Out of the budget now, and not chosen again while it closes.
	b.mem.setBuffer(c, 0)
	b.mem.partialCloses.Add(1)
	c.close(closedMemoryBudget, "over the memory budget with the largest partial frame", nil)
	c.nc.Close()
	c.log().Warn("connection holds the largest partial frame while the broker is over its memory budget; closing it",
		"buffered", h.n, "budget", b.mem.limit)
}

// RuntimeMemoryLimit is the Go runtime's soft memory limit that suits a
// broker whose Config.MemoryLimit is budget: the budget and an eighth more
// for everything else, so garbage is collected before it doubles the heap.
// The hpfeeds-broker command sets it (debug.SetMemoryLimit); a program
// embedding the broker decides for itself.
func RuntimeMemoryLimit(budget int64) int64 {
	return budget + budget/8
}

// timer is the reader's reusable timer for its pauses.
func (c *conn) timer() *time.Timer {
	if c.pauseTimer == nil {
		c.pauseTimer = time.NewTimer(time.Hour)
		c.pauseTimer.Stop()
	}
	return c.pauseTimer
}

// noteStall remembers a stalled subscriber queue this reader pushed to.
func (c *conn) noteStall(ch chan struct{}) {
	if len(c.stalls) < maxStallWaits && !slices.Contains(c.stalls, ch) {
		c.stalls = append(c.stalls, ch)
	}
}

// Read is the frame reader's only way to the socket: beforeRead applies
// the read rules, then it reads, going on over a deadline that fired
// between frames.
func (c *conn) Read(p []byte) (int, error) {
	if err := c.beforeRead(); err != nil {
		return 0, err
	}
	if c.readCap > 0 && len(p) > c.readCap {
		p = p[:c.readCap]
		c.readCap = 0
	}
	for {
		// Checked after beforeRead moved the deadline: a close after
		// this check sets its own deadline, which then wins.
		if c.closing() {
			return 0, errClosing
		}
		n, err := c.nc.Read(p)
		c.stats.recvBytes.Add(uint64(n))
		if n == 0 && c.framed && errors.Is(err, os.ErrDeadlineExceeded) && !c.closing() && c.frameTimeLeft() {
			continue
		}
		return n, err
	}
}

// beforeRead runs before every read, as nats-server's readLoop does its
// checks: the frames read so far are acted on (writers woken), and once
// authenticated the reader's buffer is counted, the frame in progress is
// timed and checked from its head, and the read gets its one stall.
func (c *conn) beforeRead() error {
	c.wakeWriters()
	if c.closing() {
		return errClosing
	}
	if !c.framed {
		return nil
	}
	c.countBuffer()
	c.watchFrame()
	if err := c.checkHead(); err != nil {
		return err
	}
	if c.outgrownAt.Load() != 0 && c.b.mem.readersCrowd(c) {
		if err := c.holdPartial(); err != nil {
			return err
		}
	}
	c.stall()
	return nil
}

// countBuffer counts the reader's buffer in the budget while it is larger
// than an idle connection's, and notes whether the frame in progress has
// outgrown it (its bytes are still arriving into a buffer grown for them).
func (c *conn) countBuffer() {
	size := int64(c.rd.BufSize())
	if size < bufferedMin || c.evicted.Load() {
		size = 0
	}
	c.b.mem.setBuffer(c, size)
	p := c.rd.Pending()
	switch out := size > 0 && len(p) >= 4 && int64(binary.BigEndian.Uint32(p)) > size; {
	case !out:
		c.outgrownAt.Store(0)
	case c.outgrownAt.Load() == 0:
		c.outgrownAt.Store(c.b.clock.Load())
	}
}

// watchFrame notes when a frame starts: bytes pending under a frame count
// not seen before. The read deadline is armed once and left while frames
// keep completing; frameTimeLeft moves it.
func (c *conn) watchFrame() {
	if len(c.rd.Pending()) == 0 {
		c.frameSince = time.Time{}
		return
	}
	if n := c.rd.Frames(); c.frameSince.IsZero() || n != c.frameSeq {
		c.frameSince, c.frameSeq, c.headChecked = time.Now(), n, false
		if c.readDeadline.IsZero() {
			c.readDeadline = c.frameSince.Add(c.b.cfg.FrameTimeout)
			c.nc.SetReadDeadline(c.readDeadline)
		}
	}
}

// checkHead refuses a large PUBLISH from its ident and channel rather than
// after buffering its body.
func (c *conn) checkHead() error {
	p := c.rd.Pending()
	if c.headChecked || len(p) < wire.HeaderLen || binary.BigEndian.Uint32(p) <= wire.MaxReadBuf {
		return nil
	}
	if ident, channel, ok := wire.PublishHead(p); ok {
		c.headChecked = true
		if c.pubChan(ident, channel) == nil {
			return errRefusedEarly
		}
	}
	return nil
}

// holdPartial holds a frame that outgrew its buffer while reader buffers
// hold most of a tight budget: it waits until there is room, its frame
// deadline passes, or the connection is closed (enforceBudget evicts the
// largest holder).
func (c *conn) holdPartial() error {
	m := &c.b.mem
	c.stats.memoryPauses.Add(1)
	t := c.timer()
	for m.readersCrowd(c) && !c.closing() {
		if time.Since(c.frameSince) >= c.b.cfg.FrameTimeout {
			c.frameTimedOut()
			return errFrameTimeout
		}
		t.Reset(MaxStall)
		m.wait(t, m.readerPause)
		t.Stop()
	}
	return nil
}

// stall is the read's one pause, MaxStall at most in all: first for the
// stalled subscribers this connection queued to, until they drain to half
// their stall mark (TCP then pushes back on the publisher instead of its
// burst piling up here), then, while memory is tight, for the budget: a
// publisher from three quarters of it, a frame that outgrew its buffer
// from a quarter.
func (c *conn) stall() {
	m := &c.b.mem
	mark := int64(-1)
	switch {
	case m.limit == 0:
	case c.outgrownAt.Load() != 0:
		mark = m.readerPause
	case len(c.pubs) > 0:
		mark = m.publisherPause
	}
	tight := mark >= 0 && m.used.Load() >= mark
	if len(c.stalls) == 0 && !tight {
		return
	}
	t := c.timer()
	t.Reset(MaxStall)
	defer t.Stop()
	c.readCap = 0
	expired := c.waitStalls(t)
	if tight && !expired && m.used.Load() >= mark {
		c.stats.memoryPauses.Add(1)
		m.wait(t, mark)
	}
}

// waitStalls waits on the stalled subscribers until t fires, and reports
// whether it did.
func (c *conn) waitStalls(t *time.Timer) (expired bool) {
	paused := false
wait:
	for _, ch := range c.stalls {
		select {
		case <-ch:
			continue
		default:
		}
		paused = true
		select {
		case <-ch:
		case <-t.C:
			c.readCap = stalledRead
			expired = true
			break wait
		}
	}
	clear(c.stalls)
	c.stalls = c.stalls[:0]
	if paused {
		c.stats.flowPauses.Add(1)
	}
	return expired
}

// frameTimeLeft is called when a read timed out: the deadline is armed
// lazily, so it may have fired between frames (the connection was idle)
// or for a frame that started later. It moves the deadline and reports
// whether to read again, or ends the connection.
func (c *conn) frameTimeLeft() bool {
	switch end := c.frameSince.Add(c.b.cfg.FrameTimeout); {
	case c.frameSince.IsZero():
		c.readDeadline = time.Time{}
	case time.Now().Before(end):
		c.readDeadline = end
	default:
		c.frameTimedOut()
		return false
	}
	c.nc.SetReadDeadline(c.readDeadline)
	return true
}

func (c *conn) frameTimedOut() {
	c.b.mem.frameTimeouts.Add(1)
	c.close(closedFrameTimeout, errFrameTimeout.Error(), nil)
	c.log().Debug("closing connection: frame not completed in time",
		"timeout", c.b.cfg.FrameTimeout, "received", c.rd.Buffered())
}
