package wire

import (
	"encoding/binary"
	"io"
	"math/bits"
	"sync"
)

const (
	// minReadBuf is small because most connections are idle sensors. The
	// buffer doubles while reads fill it (a busy publisher gets many frames
	// per syscall), halves while they don't, and grows for a large frame
	// only as that frame's bytes arrive, and only until it is consumed.
	minReadBuf = 256
	// MaxReadBuf is the largest buffer kept for batching reads; a buffer
	// larger than this holds part of a frame that does not fit in it.
	MaxReadBuf = 64 << 10
)

// Reader reads frames from a stream through one reusable buffer.
// It is not safe for concurrent use.
type Reader struct {
	r          io.Reader
	buf        []byte
	start, end int
	size       int  // the buffer size reads are currently batched into
	full       bool // the last read filled the room it was given
	// lastLarge is the length of the last large frame returned: the room
	// a large frame gets at once, since this stream has sent one that big
	// whole (a stream of large frames then costs no growth steps).
	lastLarge int
	frames    uint64 // frames returned so far
	// spill holds the rest of a frame in progress that outgrew a buffer
	// of spillFrom bytes or more, past that full buffer; nil otherwise.
	spill *spill

	// Limits bounds each frame's length by opcode; it may be changed
	// between calls to Next (for instance once a client has authenticated).
	Limits Limits
}

// NewReader returns a Reader on r that accepts frames within limits.
func NewReader(r io.Reader, limits Limits) *Reader {
	return &Reader{r: r, Limits: limits}
}

// Next returns the next whole frame. The frame aliases the Reader's buffer
// and is valid until the Reader next reads from the stream, which Next does
// only when Ready is false. A malformed frame returns one of
// the package's decoding errors; a read error is returned as is, with
// io.ErrUnexpectedEOF when the stream ends inside a frame.
func (r *Reader) Next() (Frame, error) {
	var f Frame
	err := r.NextInto(&f)
	return f, err
}

// NextInto is Next decoding into *f, for a caller on the hot path: a
// Frame is 13 words, and returned by value it is copied at each step up.
func (r *Reader) NextInto(f *Frame) error {
	// A frame already buffered (the caller waited, or a read brought
	// several) is split at once: its header is checked once.
	n, _, err := f.split(r.buf[r.start:r.end], &r.Limits)
	if n == 0 && err == nil {
		if err := r.Wait(); err != nil {
			return err
		}
		n, _, err = f.split(r.buf[r.start:r.end], &r.Limits)
	}
	if err != nil {
		return err
	}
	r.start += n
	r.frames++
	if n > MaxReadBuf {
		r.lastLarge = n
	}
	return nil
}

// Ready reports that Next will return without reading: as many bytes as
// the next frame declares are buffered. Until a read, the frames Next
// returned stay where they are, so a caller may keep them across calls.
// It looks at the length alone, small enough to inline on the hot path: a
// header Next refuses may report false, which only costs the caller what it
// does before a read.
func (r *Reader) Ready() bool {
	b := r.buf[r.start:r.end]
	return len(b) >= HeaderLen && int(binary.BigEndian.Uint32(b)) <= len(b)
}

// Wait reads until a whole frame, or a header Next will refuse, is
// buffered; it returns only read errors. A caller that waits here and then
// calls Next blocks from a small stack frame rather than the decoder's: an
// idle connection's reader waits here, within the 2 KiB stack a goroutine
// starts with (which, once grown, Go does not shrink back).
func (r *Reader) Wait() error {
	for {
		want, err := r.want()
		if err != nil || want == 0 {
			return nil
		}
		if err := r.fill(want); err != nil {
			if err == io.EOF && r.end > r.start {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
}

// want is how many bytes the frame at the front needs, 0 once it is all
// buffered; an error is the header's.
func (r *Reader) want() (int, error) {
	b := r.buf[r.start:r.end]
	if len(b) < HeaderLen {
		return HeaderLen, nil
	}
	size, _, err := Header(b, &r.Limits)
	if err != nil || len(b) >= size {
		return 0, err
	}
	return size, nil
}

// Pending returns the bytes read from the stream but not yet returned as
// frames: while Next reads, the start of the frame in progress, so a caller
// can look at its header and first fields before its body has arrived (of
// a frame larger than 4 KiB, its first 4 KiB or more; see Buffered). It
// aliases the buffer and is valid until the Reader's next read.
func (r *Reader) Pending() []byte { return r.buf[r.start:r.end] }

// Buffered is how many bytes were read but not yet returned as frames:
// Pending's, and those of a large frame in progress past them.
func (r *Reader) Buffered() int {
	n := r.end - r.start
	if s := r.spill; s != nil {
		n += s.n
	}
	return n
}

// Frames is how many frames Next has returned. With Pending it tells a
// caller when a frame starts: bytes pending under a count not seen before
// are a new frame in progress.
func (r *Reader) Frames() uint64 { return r.frames }

// BufSize is the memory the Reader's buffers hold: their capacity, which a
// pooled buffer may have beyond the length in use.
func (r *Reader) BufSize() int {
	if r.spill != nil {
		return cap(r.buf) + r.spill.held
	}
	return cap(r.buf)
}

// Release lets go of the Reader's buffers, for other Readers to use; the
// Reader must not be used after it.
func (r *Reader) Release() {
	if r.spill != nil {
		r.spill.release()
		r.spill = nil
	}
	putBuf(r.buf)
	r.buf, r.start, r.end = nil, 0, 0
}

// fill reads at least once, making room for a frame of want bytes.
func (r *Reader) fill(want int) error {
	if r.size == 0 {
		r.size = minReadBuf
	}
	pending := r.end - r.start
	if r.spill != nil {
		return r.fillSpill(want)
	}
	if want > max(r.size, len(r.buf)) {
		// A frame larger than the buffer reads are batched into gets
		// room only as its bytes arrive: once they fill the buffer, half
		// as much again (or the batch size, which doubles as they do). A
		// header alone, whatever length it declares, costs nothing, and
		// the buffer is never more than twice what arrived, or the size
		// of a large frame this stream completed before. From
		// spillFrom, a frame larger than that one goes on in chunks
		// (fillSpill) rather than in ever larger copies of its start.
		switch {
		case pending < len(r.buf):
			want = len(r.buf)
		case want <= r.lastLarge:
		case pending >= spillFrom:
			r.spill = &spill{}
			return r.fillSpill(want)
		default:
			want = min(want, max(r.size, pending*3/2))
		}
	}
	if pending == 0 {
		r.start, r.end = 0, 0
	}
	// The buffer takes its new size (or grows to fit the frame in
	// progress) whenever moving what is pending is due anyway: frames
	// that straddle every read would otherwise keep it small for ever.
	// A large buffer is kept between frames while reads fill it (large
	// frames streaming in), and let go as soon as the stream slows.
	keep := pending == 0 && r.full && len(r.buf) > r.size
	if size := max(want, r.size); size != len(r.buf) && (pending == 0 && !keep || size > len(r.buf) || r.start+want > len(r.buf)) {
		nb := getBuf(size)
		r.end = copy(nb, r.buf[r.start:r.end])
		putBuf(r.buf)
		r.buf, r.start = nb, 0
	} else if r.start+want > len(r.buf) || r.start > 0 && len(r.buf)-r.end < len(r.buf)/8 {
		// Little room left: move the frame in progress to the front
		// rather than read a few bytes.
		r.end = copy(r.buf, r.buf[r.start:r.end])
		r.start = 0
	}
	space, wasFull := len(r.buf)-r.end, r.full
	n, err := r.r.Read(r.buf[r.end:])
	r.end += n
	// Full only if the read could have brought more than the frame in
	// progress: a buffer that ends where the frame ends fills whether or
	// not anything follows it.
	r.full = n == space && len(r.buf) > r.start+want
	switch {
	case n == space && r.size < MaxReadBuf:
		r.size *= 2
	case n < r.size/8 && r.size > minReadBuf && !wasFull:
		// Not after a read that filled the buffer: that short read is
		// the rest of the same burst, and halving on it made a stream of
		// bursts a little over the buffer take two new buffers a burst.
		r.size /= 2
	}
	if n > 0 {
		return nil
	}
	if r.end == r.start {
		putBuf(r.buf)
		r.buf = nil // the stream ended or failed: hold nothing
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

const (
	// spillFrom is the buffer size from which a frame larger than the
	// buffer goes on in chunks.
	spillFrom = 4 << 10
	// minChunk and maxChunk bound the chunks' sizes, powers of two.
	minChunk, maxChunk = spillFrom / 2, MaxReadBuf / 2
)

// spill is the part of a frame in progress past the Reader's buffer, which
// is full. Each chunk is filled before the next is taken.
type spill struct {
	chunks []*[]byte
	n      int // bytes in the chunks
	held   int // the chunks' capacity
}

// fillSpill reads the rest of a frame of want bytes into chunks, and once
// it has all arrived, makes it whole in one buffer. A frame that grew in
// place would leave a copy of its start behind at every step, for the
// garbage collector: the partial frames of the memory attacks left
// several times what they held. Each chunk is the largest power of two
// up to half what arrived (up to maxChunk), so the buffers never hold
// more than one and a half times what arrived, and chunks of a frame
// completed or abandoned serve any other frame that outgrows its buffer.
func (r *Reader) fillSpill(want int) error {
	s := r.spill
	have := r.end - r.start + s.n
	if s.n == s.held {
		size := min(maxChunk, 1<<(bits.Len(uint(have/2))-1))
		s.chunks = append(s.chunks, getChunk(size))
		s.held += size
	}
	last := *s.chunks[len(s.chunks)-1]
	off := len(last) - (s.held - s.n)
	// Only the frame's bytes: what follows it is read into the buffer
	// the frame is made whole in, once it has been consumed.
	n, err := r.r.Read(last[off:min(len(last), off+want-have)])
	s.n += n
	if have+n == want {
		nb := getBuf(want)
		m := copy(nb, r.buf[r.start:r.end])
		for _, c := range s.chunks {
			m += copy(nb[m:], *c)
		}
		s.release()
		putBuf(r.buf)
		r.buf, r.start, r.end, r.spill = nb, 0, want, nil
	}
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// release gives the chunks back for other frames.
func (s *spill) release() {
	for _, c := range s.chunks {
		chunkPools[chunkClass(len(*c))].Put(c)
	}
	s.chunks = nil
}

// chunkPools holds the chunks of frames completed or abandoned, one pool
// per size: 2, 4, 8, 16 and 32 KiB.
var chunkPools [5]sync.Pool

func chunkClass(size int) int { return bits.Len(uint(size)) - bits.Len(minChunk) }

func getChunk(size int) *[]byte {
	if c, ok := chunkPools[chunkClass(size)].Get().(*[]byte); ok {
		return c
	}
	c := make([]byte, size)
	return &c
}

// largeBufs holds buffers of more than MaxReadBuf bytes that readers let
// go: a reader gives up a large frame's buffer as soon as it is consumed,
// so a connection that goes quiet holds none, and one that streams large
// frames takes the same memory back instead of faulting in new pages.
var largeBufs sync.Pool

func getBuf(size int) []byte {
	if size > MaxReadBuf {
		// A pooled buffer far larger than the frame would hold memory
		// the frame's bytes never justified: leave it for a larger one.
		if p, ok := largeBufs.Get().(*[]byte); ok {
			if cap(*p) >= size && cap(*p) <= 2*size {
				return (*p)[:size]
			}
			largeBufs.Put(p)
		}
	}
	return make([]byte, size)
}

func putBuf(b []byte) {
	if cap(b) > MaxReadBuf {
		largeBufs.Put(&b)
	}
}
