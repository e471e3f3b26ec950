package retain

import (
	"context"
	"encoding/binary"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Pos is a place in a channel's history: frame Idx of the stored message
// Seq; a Seq with no message of the channel means the next one after it.
type Pos struct {
	Seq uint64
	Idx int
}

// batch is one stored message in the making: PUBLISH frames side by side.
type batch struct {
	data   []byte
	frames int
	seq    uint64        // once done: where it was stored (or, failed, where it would resume)
	failed bool          // the store refused it
	freed  int           // len(data) when a refused batch's buffer was freed
	done   chan struct{} // closed once stored or failed
	at     time.Time     // when its first frame came
	ch     *Channel
	msg    *nats.Msg // as published
}

// size is the bytes of the batch's frames, also once the buffer of a
// refused batch is freed.
func (b *batch) size() int {
	if b.data == nil {
		return b.freed
	}
	return len(b.data)
}

// Mark is a place in a channel's history that may not be stored yet:
// after the first Idx frames of a batch, or, without one, Pos.
type Mark struct {
	b   *batch
	idx int
	pos Pos
}

// meta is a stored batch the channel still remembers, to walk back from
// a disconnect over what the peer did not acknowledge.
type meta struct {
	seq  uint64
	size int
}

const recentMax = 1024

// Channel is one retained channel's log. The broker holds its lock while it
// appends a frame and delivers it live, so the order of the log is the
// order of delivery, and a subscriber switching from the log to live
// delivery under the lock misses nothing and gets nothing twice.
type Channel struct {
	e       *Engine
	name    string
	subject string

	mu        sync.Mutex
	cur       *batch
	inflight  []*batch // flushed, not yet acknowledged, in order
	recent    []meta   // a ring of the latest acknowledged batches
	recentAt  int      // where the next goes in recent
	base      uint64   // where the channel's log went on when opened; 0: unknown (the store did not answer)
	lastAcked uint64   // the sequence of the latest batch stored in order
	timer     *time.Timer
	closed    bool // the engine is closing

	// Frames appended and their bytes, counted on from the values the
	// channel's last stored batch carries (headers hdrFrames, hdrBytes),
	// so stored counts survive a restart.
	cumFrames, cumBytes atomic.Uint64
}

// Each stored batch carries the channel's frame and byte counts after it,
// and its own frame count (so that reading the counts needs no
// decompression; batches stored before it was added lack it).
const (
	hdrFrames      = "Hpfeeds-Frames"
	hdrBytes       = "Hpfeeds-Bytes"
	hdrBatchFrames = "Hpfeeds-Batch-Frames"
)

// Lock and Unlock hold the channel for an append and its live delivery,
// or for a subscriber's switch to live delivery.
func (ch *Channel) Lock()   { ch.mu.Lock() }
func (ch *Channel) Unlock() { ch.mu.Unlock() }

// Name is the channel.
func (ch *Channel) Name() string { return ch.name }

// Append adds a PUBLISH frame to the log; the caller holds the lock. The
// frame is copied. Nothing here waits for the store.
func (ch *Channel) Append(frame []byte) {
	max := ch.e.opts.BatchBytes
	if ch.cur != nil && len(ch.cur.data)+len(frame) > max {
		ch.flushLocked()
	}
	if ch.cur == nil {
		ch.cur = &batch{data: ch.e.buffer(len(frame)), done: make(chan struct{}), at: time.Now()}
		if ch.timer == nil {
			ch.timer = time.AfterFunc(ch.e.opts.FlushAfter, ch.timedFlush)
		} else {
			ch.timer.Reset(ch.e.opts.FlushAfter)
		}
	}
	ch.cur.data = append(ch.cur.data, frame...)
	ch.cur.frames++
	ch.cumFrames.Add(1)
	ch.cumBytes.Add(uint64(len(frame)))
	if len(ch.cur.data) >= max {
		ch.flushLocked()
	}
}

func (ch *Channel) timedFlush() {
	ch.mu.Lock()
	ch.flushLocked()
	ch.mu.Unlock()
}

// flushLocked hands the batch in the making to the engine's publisher. A
// store slower than the publishers holds them up (flow control) for at
// most storeStall per batch; a batch still not taken then is dropped and
// counted, and until the store takes one again batches that find the
// queue full drop at once: a stuck store never stops live delivery.
func (ch *Channel) flushLocked() {
	b := ch.cur
	if b == nil || b.frames == 0 || ch.closed {
		return
	}
	ch.cur = nil
	ch.inflight = append(ch.inflight, b)
	b.ch = ch
	b.msg = &nats.Msg{Subject: ch.subject, Data: b.data, Header: nats.Header{
		hdrFrames:      {strconv.FormatUint(ch.cumFrames.Load(), 10)},
		hdrBytes:       {strconv.FormatUint(ch.cumBytes.Load(), 10)},
		hdrBatchFrames: {strconv.Itoa(b.frames)},
	}}
	select {
	case ch.e.out <- b:
		ch.e.stuck.Store(false)
		return
	default:
	}
	if ch.e.stuck.Load() {
		ch.settleLocked(b, 0, errBacklog)
		return
	}
	t := time.NewTimer(storeStall)
	defer t.Stop()
	select {
	case ch.e.out <- b:
	case <-t.C:
		ch.e.stuck.Store(true)
		ch.settleLocked(b, 0, errBacklog)
	}
}

// storeStall bounds how long a publish waits for the store to take a batch.
const storeStall = 100 * time.Millisecond

var errBacklog = errors.New("the store is not keeping up: batch dropped")

// publishLoop publishes batches in the order they were flushed.
func (e *Engine) publishLoop() {
	defer close(e.published)
	var scratch []byte
	for b := range e.out {
		scratch, b.msg.Data = pack(scratch, b.data)
		fut, err := e.js.PublishMsgAsync(b.msg, jetstream.WithStallWait(time.Second))
		if err != nil {
			b.ch.mu.Lock()
			b.ch.settleLocked(b, 0, err)
			b.ch.mu.Unlock()
			continue
		}
		go b.ch.await(b, fut)
	}
}

func (ch *Channel) await(b *batch, fut jetstream.PubAckFuture) {
	var seq uint64
	var err error
	select {
	case ack := <-fut.Ok():
		seq = ack.Sequence
	case err = <-fut.Err():
	}
	ch.mu.Lock()
	ch.settleLocked(b, seq, err)
	ch.mu.Unlock()
}

// settleLocked records a batch's outcome and retires, in order, the
// batches that are settled.
func (ch *Channel) settleLocked(b *batch, seq uint64, err error) {
	if err != nil {
		b.failed = true
		ch.e.failed(ch.name, b.frames, err)
		// Never stored: its frames leave the counts the next batches carry
		// (what /chanz shows), and its buffer is freed now, not when the
		// batches before it settle.
		ch.cumFrames.Add(-uint64(b.frames))
		ch.cumBytes.Add(-uint64(len(b.data)))
		ch.e.release(b.data)
		b.data, b.freed = nil, len(b.data)
	} else {
		b.seq = seq
	}
	for len(ch.inflight) > 0 {
		f := ch.inflight[0]
		if f.seq == 0 && !f.failed {
			break
		}
		ch.inflight[0] = nil
		ch.inflight = ch.inflight[1:]
		if f.failed {
			f.seq = ch.next().Seq // resume at whatever is stored next
		} else {
			ch.e.acked.Add(1)
			ch.lastAcked = max(ch.lastAcked, f.seq)
			ch.remember(meta{f.seq, len(f.data)})
		}
		// Settled: JetStream holds its own copy, and Tail hands out copies.
		ch.e.release(f.data)
		f.data, f.msg = nil, nil
		close(f.done)
	}
}

func (ch *Channel) remember(m meta) {
	if len(ch.recent) < recentMax {
		ch.recent = append(ch.recent, m)
		return
	}
	ch.recent[ch.recentAt] = m
	ch.recentAt = (ch.recentAt + 1) % recentMax
}

// Head is the place after the last frame appended; the caller holds the lock.
func (ch *Channel) Head() Mark { return ch.Back(0) }

// Back is the place back bytes of frames before the head: a subscriber
// whose last back bytes were not acknowledged resumes there. Walked over
// the frames in memory exactly, over older stored batches to the start of
// the batch (a few more frames sent twice), and no further than the
// batches remembered (see recentMax). The caller holds the lock.
func (ch *Channel) Back(back int) Mark {
	held := make([]*batch, 0, len(ch.inflight)+1)
	held = append(held, ch.inflight...)
	if ch.cur != nil && ch.cur.frames > 0 {
		held = append(held, ch.cur)
	}
	for i := len(held) - 1; i >= 0; i-- {
		b := held[i]
		if back < b.size() || back == 0 {
			return Mark{b: b, idx: frameAt(b.data, len(b.data)-back)} // a refused batch's resolves to its start
		}
		back -= b.size()
	}
	if len(ch.recent) == 0 {
		return Mark{pos: ch.next()}
	}
	n := len(ch.recent)
	for k := 1; k <= n; k++ {
		m := ch.recent[(ch.recentAt-k+n)%n]
		if back == 0 {
			return Mark{pos: Pos{m.seq + 1, 0}}
		}
		if back < m.size || k == n {
			return Mark{pos: Pos{m.seq, 0}}
		}
		back -= m.size
	}
	panic("unreachable")
}

// next is where the channel's history goes on after the batches it knows
// stored; zero if the store did not answer when the channel was opened
// and none has been stored since (Resolve then looks it up). The caller
// holds the lock.
func (ch *Channel) next() Pos {
	if ch.base == 0 && ch.lastAcked == 0 {
		return Pos{}
	}
	return Pos{max(ch.base, ch.lastAcked+1), 0}
}

// frameAt is the index of the first frame in data that ends after off.
func frameAt(data []byte, off int) int {
	i, at := 0, 0
	for at < len(data) {
		at += int(binary.BigEndian.Uint32(data[at:]))
		if at > off {
			return i
		}
		i++
	}
	return i
}

// Resolve waits until m is stored and returns its position.
func (ch *Channel) Resolve(ctx context.Context, m Mark) (Pos, error) {
	p := m.pos
	if m.b != nil {
		select {
		case <-m.b.done:
		case <-ctx.Done():
			return Pos{}, ctx.Err()
		}
		switch {
		case m.b.failed:
			p = Pos{m.b.seq, 0}
		case m.idx >= m.b.frames:
			p = Pos{m.b.seq + 1, 0}
		default:
			p = Pos{m.b.seq, m.idx}
		}
	}
	if p == (Pos{}) { // the channel was opened while the store did not answer: its end now
		_, p, err := ch.e.end(ctx, ch.subject)
		return p, err
	}
	return p, nil
}

// Tail returns the frames appended and not yet known to be stored, if p is
// past every stored batch of this broker's; ok is false if the store holds
// more to read first. The caller holds the lock; the frames stay valid.
func (ch *Channel) Tail(p Pos) (frames [][]byte, ok bool) {
	if ch.lastAcked >= p.Seq {
		return nil, false
	}
	var data []byte // a copy: the batches' buffers are reused once settled
	for _, b := range ch.inflight {
		data = append(data, b.data...)
	}
	if ch.cur != nil {
		data = append(data, ch.cur.data...)
	}
	return appendFrames(frames, data, 0), true
}

// appendFrames appends data's frames from the skip-th, each a slice with
// no room past its end (so no writer mistakes it for a growing buffer).
func appendFrames(frames [][]byte, data []byte, skip int) [][]byte {
	for at, i := 0, 0; at+4 <= len(data); i++ {
		n := int(binary.BigEndian.Uint32(data[at:]))
		if n < 5 || at+n > len(data) {
			break // not a frame: a foreign message on the subject
		}
		if i >= skip {
			frames = append(frames, data[at:at+n:at+n])
		}
		at += n
	}
	return frames
}

// Stats are a retained channel's stored history.
type Stats struct {
	Messages, Bytes uint64
	Oldest          time.Time // of the oldest stored batch; zero if none
}

// Stats reads the channel's oldest stored batch: with the counts the
// newest carries, they give what is stored.
func (ch *Channel) Stats(ctx context.Context) Stats {
	m, err := ch.e.stream.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(ch.subject))
	if err != nil {
		return Stats{}
	}
	frames, bytes := counts(m)
	return Stats{
		Messages: ch.cumFrames.Load() - (frames - framesIn(m, ch.e.maxBatch())),
		Bytes:    ch.cumBytes.Load() - (bytes - uint64(unpackedLen(m.Data, ch.e.maxBatch()))),
		Oldest:   m.Time,
	}
}

// counts are the channel's frame and byte counts after stored batch m.
func counts(m *jetstream.RawStreamMsg) (frames, bytes uint64) {
	frames, _ = strconv.ParseUint(m.Header.Get(hdrFrames), 10, 64)
	bytes, _ = strconv.ParseUint(m.Header.Get(hdrBytes), 10, 64)
	return frames, bytes
}

// framesIn is the number of frames in stored batch m, which can hold at
// most limit bytes of them.
func framesIn(m *jetstream.RawStreamMsg, limit int) uint64 {
	if n, err := strconv.ParseUint(m.Header.Get(hdrBatchFrames), 10, 64); err == nil {
		return n
	}
	data, _ := unpack(nil, m.Data, limit)
	return uint64(len(appendFrames(nil, data, 0)))
}

// Behind is how far p is behind the channel's head: in messages, and the
// time the message at p was stored (zero when p is at the head).
func (ch *Channel) Behind(ctx context.Context, p Pos) (msgs uint64, since time.Time) {
	m, err := ch.e.stream.GetMsg(ctx, p.Seq, jetstream.WithGetMsgSubject(ch.subject))
	if err != nil {
		return 0, time.Time{}
	}
	frames, _ := counts(m)
	at := frames - framesIn(m, ch.e.maxBatch())
	if m.Sequence == p.Seq {
		at += uint64(p.Idx)
	}
	return ch.cumFrames.Load() - min(at, ch.cumFrames.Load()), m.Time
}
