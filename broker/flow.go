package broker

import (
	"encoding/binary"
	"errors"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hpfeeds-go/hpfeeds/wire"
)

// MaxStall bounds how long flow control holds a publisher before one read,
// whatever its subscribers do: it waits for the stalled subscribers it
// queued to (all of them together, not each in turn) for at most this long,
// then reads again. A publisher into subscribers that never drain therefore
// still gets a read of up to 4 KiB every MaxStall, until the backpressure
// deadline or hard bound closes them. The same bound holds a publisher while
// memory is tight (see Config.MemoryLimit).
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
	// heldMin is the reader buffer size from which a connection's buffer
	// counts in the memory budget: idle connections' small buffers don't.
	heldMin = 4 << 10
)

// errFrameTimeout ends a connection whose frame was not completed in time.
var errFrameTimeout = errors.New("frame not completed within the frame timeout")

// errRefusedEarly ends the reading of a PUBLISH refused from its header.
var errRefusedEarly = errors.New("PUBLISH refused before its body was read")

// memBudget counts the bytes of every send queue and large reader buffer.
// Publishers count what they queue once per read batch, writers what they
// wrote once per write: nothing per delivery.
type memBudget struct {
	limit     int64 // zero: no budget, bytes are only counted
	pauseAt   int64 // publishers pause from here (three quarters)
	partialAt int64 // large partial frames pause from here (a quarter)
	used      atomic.Int64
	partial   atomic.Int64 // the part of used in reader buffers
	// releasing is the part of used that closed subscribers' blocked
	// writes still hold: it goes within the flush timeout, so closing
	// more subscribers for it would not help.
	releasing atomic.Int64

	mu     sync.Mutex
	relief chan struct{} // closed when used drops under pauseAt
	over   chan struct{} // wakes enforceBudget

	frameTimeouts, partialCloses atomic.Uint64
}

func (m *memBudget) init(limit int64) {
	m.limit, m.pauseAt, m.partialAt = limit, limit/4*3, limit/4
	m.over = make(chan struct{}, 1)
}

func (m *memBudget) add(n int) {
	if n == 0 {
		return
	}
	u := m.used.Add(int64(n))
	switch {
	case m.limit == 0:
	case n > 0 && u > m.limit:
		select {
		case m.over <- struct{}{}:
		default:
		}
	case n < 0 && u < m.pauseAt && u-int64(n) >= m.pauseAt:
		m.mu.Lock()
		if m.relief != nil {
			close(m.relief)
			m.relief = nil
		}
		m.mu.Unlock()
	}
}

// addPartial counts n bytes of reader buffers.
func (m *memBudget) addPartial(n int64) {
	m.partial.Add(n)
	m.add(int(n))
}

// wait holds the caller until used drops under mark or d has passed; only
// a drop under pauseAt wakes it early.
func (m *memBudget) wait(t *time.Timer, d time.Duration, mark int64) {
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
	t.Reset(d)
	select {
	case <-ch:
	case <-t.C:
	}
	t.Stop()
}

// enforceBudget closes connections, one at a time, while the budget is
// exceeded: first the subscribers holding the most queued bytes, then, if
// no queue holds anything, the connections holding the largest partial
// frames.
func (b *Broker) enforceBudget() {
	for {
		select {
		case <-b.ctx.Done():
			return
		case <-b.mem.over:
		}
		for b.mem.used.Load()-b.mem.releasing.Load() > b.mem.limit && (b.closeLargestQueue() || b.closeLargestPartial()) {
		}
	}
}

// closeLargestQueue closes the subscriber with the most queued bytes with
// the backpressure error, and reports whether there was one.
func (b *Broker) closeLargestQueue() bool {
	var worst *conn
	most := 0
	b.mu.Lock()
	for c := range b.conns {
		c.q.mu.Lock()
		if n := c.q.queued; n > most && !c.q.closing {
			worst, most = c, n
		}
		c.q.mu.Unlock()
	}
	b.mu.Unlock()
	if worst == nil {
		return false
	}
	q := &worst.q
	q.mu.Lock()
	if !q.closing {
		q.failLocked(BackpressureMemoryBudget)
	}
	start, wake := q.kickLocked()
	q.mu.Unlock()
	q.kick(start, wake)
	worst.log().Warn("subscriber holds the most queued bytes while the broker is over its memory budget; closing it",
		"error", wire.ErrBackpressure, "queued", most, "budget", b.mem.limit)
	return true
}

// closeLargestPartial closes the connection whose reader holds the most
// memory, and reports whether there was one.
func (b *Broker) closeLargestPartial() bool {
	var worst *conn
	var most int64
	b.mu.Lock()
	for c := range b.conns {
		if n := c.held.Load(); n > most && !c.evicted.Load() {
			worst, most = c, n
		}
	}
	b.mu.Unlock()
	if worst == nil || !worst.evicted.CompareAndSwap(false, true) {
		return worst != nil
	}
	// Out of the budget now, and not chosen again while it closes.
	b.mem.addPartial(-worst.held.Swap(0))
	b.mem.partialCloses.Add(1)
	worst.setReason("over the memory budget with the largest partial frame")
	worst.nc.Close()
	worst.log().Warn("connection holds the largest partial frame while the broker is over its memory budget; closing it",
		"buffered", most, "budget", b.mem.limit)
	return true
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

// waitStalls holds the reader until the stalled subscribers it queued to
// have drained to half their stall mark, or MaxStall has passed: TCP then
// pushes back on the publisher instead of its burst piling up here.
func (c *conn) waitStalls() {
	t := c.timer()
	t.Reset(MaxStall)
	paused := false
	c.readCap = 0
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
			break wait
		}
	}
	t.Stop()
	clear(c.stalls)
	c.stalls = c.stalls[:0]
	if paused {
		c.stats.flowPauses.Add(1)
	}
}

// Read is the frame reader's only way to the socket, so the policy of when
// to read lives here: before each read the frames read so far are acted on
// (writers woken, bytes counted, stalled subscribers waited for), and once
// authenticated the frame in progress is checked, timed and paused while
// memory is tight.
func (c *conn) Read(p []byte) (int, error) {
	c.wakeWriters()
	if len(c.stalls) > 0 {
		c.waitStalls()
	}
	if c.framed {
		if err := c.framePolicy(); err != nil {
			return 0, err
		}
	}
	if c.readCap > 0 && len(p) > c.readCap {
		p = p[:c.readCap]
		c.readCap = 0
	}
	for {
		n, err := c.nc.Read(p)
		c.stats.recvBytes.Add(uint64(n))
		if n == 0 && c.framed && errors.Is(err, os.ErrDeadlineExceeded) && c.frameTimeLeft() {
			continue
		}
		return n, err
	}
}

// framePolicy runs before each read of an authenticated connection.
func (c *conn) framePolicy() error {
	c.accountHeld()
	pending := c.rd.Pending()
	if len(pending) == 0 {
		c.partialSince = time.Time{}
	} else if parsed := c.stats.parsedBytes.Load(); c.partialSince.IsZero() || parsed != c.partialAt {
		// A new frame in progress. The read deadline is armed once and
		// left while frames keep completing; frameTimeLeft moves it.
		c.partialSince, c.partialAt, c.headChecked = time.Now(), parsed, false
		if c.readDeadline.IsZero() {
			c.readDeadline = c.partialSince.Add(c.b.cfg.FrameTimeout)
			c.nc.SetReadDeadline(c.readDeadline)
		}
	}
	if !c.headChecked && len(pending) >= wire.HeaderLen && binary.BigEndian.Uint32(pending) > wire.MaxReadBuf {
		// A large PUBLISH: refuse it from its ident and channel rather
		// than after buffering its body.
		if ident, channel, ok := wire.PublishHead(pending); ok {
			c.headChecked = true
			if c.pubChan(ident, channel) == nil {
				return errRefusedEarly
			}
		}
	}
	if m := &c.b.mem; m.limit > 0 && m.used.Load() >= m.partialAt {
		return c.memoryPause()
	}
	return nil
}

// accountHeld counts the reader's buffer in the memory budget while it is
// larger than an idle connection's.
func (c *conn) accountHeld() {
	held := int64(c.rd.BufSize())
	if held < heldMin {
		held = 0
	}
	for {
		// enforceBudget may take the buffer out of the budget meanwhile.
		old := c.held.Load()
		if old == held || c.held.CompareAndSwap(old, held) {
			c.b.mem.addPartial(held - old)
			return
		}
	}
}

// memoryPause holds a reader while memory is tight. A large partial frame
// waits from a quarter of the budget, for as long as partial frames hold most of
// it, until it has room, its frame deadline passes or enforceBudget closes
// it; otherwise (the send queues hold most of it: only closing the largest
// ones helps) it waits at most MaxStall, like a publisher from three
// quarters of the budget.
func (c *conn) memoryPause() error {
	m := &c.b.mem
	used := m.used.Load()
	big := c.held.Load() > wire.MaxReadBuf
	if !(big && used >= m.partialAt || len(c.pubs) > 0 && used >= m.pauseAt) {
		return nil
	}
	c.stats.memoryPauses.Add(1)
	t := c.timer()
	// Closing the connection (the budget, revalidation, shutdown) sets
	// its reason: a closed one stops waiting.
	for big && m.used.Load() >= m.partialAt && 2*m.partial.Load() >= m.used.Load() && c.reason.Load() == nil {
		if time.Since(c.partialSince) >= c.b.cfg.FrameTimeout {
			c.frameTimedOut()
			return errFrameTimeout
		}
		m.wait(t, MaxStall, m.partialAt)
	}
	mark := m.pauseAt
	if big {
		mark = m.partialAt
	}
	m.wait(t, MaxStall, mark)
	return nil
}

// frameTimeLeft is called when a read timed out: the deadline is armed
// lazily, so it may have fired between frames (the connection was idle)
// or for a frame that started later. It moves the deadline and reports
// whether to read again, or ends the connection.
func (c *conn) frameTimeLeft() bool {
	switch end := c.partialSince.Add(c.b.cfg.FrameTimeout); {
	case c.partialSince.IsZero():
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
	c.setReason(errFrameTimeout.Error())
	c.log().Debug("closing connection: frame not completed in time",
		"timeout", c.b.cfg.FrameTimeout, "received", len(c.rd.Pending()))
}
