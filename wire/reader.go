package wire

import (
	"io"
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

	// Limits bounds each frame's length by opcode; it may be changed
	// between calls to Next (for instance once a client has authenticated).
	Limits Limits
}

// NewReader returns a Reader on r that accepts frames within limits.
func NewReader(r io.Reader, limits Limits) *Reader {
	return &Reader{r: r, Limits: limits}
}

// Next returns the next whole frame. The frame aliases the Reader's buffer
// and is valid only until the next call. A malformed frame returns one of
// the package's decoding errors; a read error is returned as is, with
// io.ErrUnexpectedEOF when the stream ends inside a frame.
func (r *Reader) Next() (Frame, error) {
	// A frame already buffered (the caller waited, or a read brought
	// several) is split at once: its header is checked once, and the
	// Frame is built in place rather than copied up through helpers.
	f, n, _, err := Split(r.buf[r.start:r.end], &r.Limits)
	if n == 0 && err == nil {
		if err := r.Wait(); err != nil {
			return Frame{}, err
		}
		f, n, _, err = Split(r.buf[r.start:r.end], &r.Limits)
	}
	if err != nil {
		return f, err
	}
	r.start += n
	r.frames++
	if n > MaxReadBuf {
		r.lastLarge = n
	}
	return f, nil
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
// can look at its header and first fields before its body has arrived. It
// aliases the buffer and is valid until the Reader's next read.
func (r *Reader) Pending() []byte { return r.buf[r.start:r.end] }

// Frames is how many frames Next has returned. With Pending it tells a
// caller when a frame starts: bytes pending under a count not seen before
// are a new frame in progress.
func (r *Reader) Frames() uint64 { return r.frames }

// BufSize is the memory the Reader's buffer holds: its capacity, which a
// pooled buffer may have beyond the length in use.
func (r *Reader) BufSize() int { return cap(r.buf) }

// fill reads at least once, making room for a frame of want bytes.
func (r *Reader) fill(want int) error {
	if r.size == 0 {
		r.size = minReadBuf
	}
	pending := r.end - r.start
	if want > max(r.size, len(r.buf)) {
		// A frame larger than the buffer reads are batched into gets
		// room only as its bytes arrive: once they fill the buffer, half
		// as much again (or the batch size, which doubles as they do). A
		// header alone, whatever length it declares, costs nothing, and
		// the buffer is never more than twice what arrived, or the size
		// of a large frame this stream completed before.
		if pending < len(r.buf) {
			want = len(r.buf)
		} else {
			want = min(want, max(r.size, pending*3/2, r.lastLarge))
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
	space := len(r.buf) - r.end
	n, err := r.r.Read(r.buf[r.end:])
	r.end += n
	// Full only if the read could have brought more than the frame in
	// progress: a buffer that ends where the frame ends fills whether or
	// not anything follows it.
	r.full = n == space && len(r.buf) > r.start+want
	switch {
	case n == space && r.size < MaxReadBuf:
		r.size *= 2
	case n < r.size/8 && r.size > minReadBuf:
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
