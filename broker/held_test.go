package broker

import (
	"bytes"
	"context"
	"testing"
	"time"
	"unsafe"

	"github.com/hpfeeds-go/hpfeeds/auth"
)

// lockedQueue is a subscriber's queue on a broker of its own, locked
// until the test ends.
func lockedQueue(t *testing.T) *sendQueue {
	br, err := New(Config{Auth: auth.Chain{}})
	if err != nil {
		t.Fatal(err)
	}
	q := &newConn(br, &discardConn{}, ModePubSub, "t").q
	q.mu.Lock()
	t.Cleanup(q.mu.Unlock)
	return q
}

// A frame a queue copied into its chunk must never look held (isHeld):
// the writer would otherwise count a hold that does not exist, in memory
// before the frame. The boundary is a frame that exactly fills the
// chunk's room.
func TestChunkCopiesAreNotHeld(t *testing.T) {
	q := lockedQueue(t)
	br := q.c.b
	q.frames = append(q.frames, nil) // a frame waiting: copies go to the chunk
	raw := bytes.Repeat([]byte{7}, copyMax)
	for i := 0; i < 3*scratchSize/copyMax; i++ {
		f := q.copyLocked(raw)
		if isHeld(f) || !bytes.Equal(f, raw) {
			t.Fatalf("copy %d: held %v, %d bytes, cap %d", i, isHeld(f), len(f), cap(f))
		}
	}
	if len(q.chunks) < 3 {
		t.Errorf("%d chunks for three chunks' worth of frames", len(q.chunks))
	}
	releaseChunks(q.chunks)
	q.chunks, q.chunk = nil, nil

	// Shared frames and a queue's lone copies are held, their count in front.
	f, sh := br.mem.share(raw[:13])
	if !isHeld(f) || holdOf(f) != sh || sh.refs.Load() != shareBias {
		t.Errorf("share: held %v, count %p (want %p) = %d", isHeld(f), holdOf(f), sh, sh.refs.Load())
	}
	br.mem.unshare(f, sh, 0)
	q.frames = q.frames[:0]
	if f := q.copyLocked(raw[:5]); !isHeld(f) || holdOf(f).refs.Load() != 1 {
		t.Errorf("a lone copy: held %v", isHeld(f))
	}
	if u := br.mem.used.Load(); u != 0 {
		t.Errorf("budget holds %d bytes after unshare", u)
	}
}

// A large frame starts on a page of its own: the kernel copied a 1 MiB
// frame 8 bytes into a page markedly slower (docs/performance.md).
func TestLargeHeldFramesStartOnAPage(t *testing.T) {
	// In a mapped buffer, and past heldMax on the heap.
	for _, n := range []int{pageAlignFrom + 1, 1 << 20, heldMax + 1} {
		raw := bytes.Repeat([]byte{9}, n)
		f := newHeld(raw, 3)
		if addr := uintptr(unsafe.Pointer(unsafe.SliceData(f))); addr%4096 != 0 {
			t.Errorf("%d bytes: frame at %#x, %d into its page", n, addr, addr%4096)
		}
		if !isHeld(f) || holdOf(f).refs.Load() != 3 || !bytes.Equal(f, raw) {
			t.Errorf("%d bytes: held %v, count %d, same bytes %v", n, isHeld(f), holdOf(f).refs.Load(), bytes.Equal(f, raw))
		}
		recycle(f)
	}
	f := newHeld(make([]byte, pageAlignFrom), 1)
	if uintptr(unsafe.Pointer(unsafe.SliceData(f)))%4096 == 0 {
		t.Errorf("a %d-byte frame was given a page of headroom", pageAlignFrom)
	}
	recycle(f) // its buffer is mapped (bufs.go): not to be left in use
}

// Frames of heldMin to heldMax bytes are carved from buffers of whole
// pages mapped outside the heap: the budget counts the buffer, all of it
// comes back when the last holder lets go, the buffer goes back on its
// free list then, and a trim unmaps the buffers that sat there unused
// since the one before.
func TestHeldBuffersAreCountedAndRecycled(t *testing.T) {
	m := &memBudget{} // no broker: no trims but the test's own
	m.init(0)
	before := bufsInUse()
	for _, c := range []struct{ n, counted int }{
		{heldMin - 1, heldMin - 1}, {heldMin, pageSize}, {pageSize - frameHeader, pageSize},
		{pageSize - frameHeader + 1, 2 * pageSize}, {9 * pageSize, 10 * pageSize},
		{fanOutMax, fanOutMax + pageSize},
		// Past fanOutMax a page of headroom, then sizes an eighth apart.
		{fanOutMax + 1, pageSize + fanOutMax*9/8}, {1<<20 + 40, pageSize + (1<<20)*9/8},
		{heldMax, pageSize + heldMax}, {heldMax + 1, heldMax + 1},
	} {
		raw := bytes.Repeat([]byte{5}, c.n)
		f, sh := m.share(raw)
		if got := m.used.Load(); got != int64(c.counted) || !bytes.Equal(f, raw) || !isHeld(f) {
			t.Fatalf("%d bytes: counted %d, want %d; same bytes %v, held %v", c.n, got, c.counted, bytes.Equal(f, raw), isHeld(f))
		}
		if mapped := heldClass(c.n) >= 0; mapped && bufsInUse()-before != int64(c.counted) || !mapped && bufsInUse() != before {
			t.Errorf("%d bytes: %d bytes of mapped buffers in use, want %d", c.n, bufsInUse()-before, c.counted)
		}
		m.unshare(f, sh, 2)
		m.releaseFrames([][]byte{f})
		if !bytes.Equal(f, raw) {
			t.Fatalf("%d bytes: changed while a queue still held it", c.n)
		}
		m.releaseFrames([][]byte{f}) // f may be unmapped from here on
		if got := m.used.Load(); got != 0 {
			t.Fatalf("%d bytes: %d still counted after the last holder let go", c.n, got)
		}
		if bufsInUse() != before {
			t.Errorf("%d bytes: %d bytes of mapped buffers still in use after the last holder let go", c.n, bufsInUse()-before)
		}
	}
	frames := make([][]byte, 64)
	for i := range frames {
		frames[i] = newHeld(make([]byte, fanOutMax), 1)
	}
	m.releaseFrames(frames)
	if free := bufFreeBytes.Load(); free < int64(len(frames)*(fanOutMax+pageSize)) {
		t.Errorf("%d bytes on the free lists after %d buffers came back", free, len(frames))
	}
	trimBufs() // the list went down to empty since the last trim: kept
	if free := bufFreeBytes.Load(); free < int64(len(frames)*(fanOutMax+pageSize)) {
		t.Errorf("%d bytes on the free lists after a trim; the buffers were in use since the last one", free)
	}
	trimBufs() // unused for a whole interval: unmapped
	if free := bufFreeBytes.Load(); free != 0 {
		t.Errorf("%d bytes on the free lists after a trim interval without use", free)
	}
	if bufsInUse() != before {
		t.Errorf("%d bytes of mapped buffers still in use", bufsInUse()-before)
	}
}

// A running broker trims the free lists on its clock: a buffer given back
// and not reused is unmapped within two trim intervals.
func TestBrokerUnmapsIdleBuffers(t *testing.T) {
	br, err := New(Config{Auth: auth.Chain{}})
	if err != nil {
		t.Fatal(err)
	}
	defer br.Shutdown(context.Background())
	f, sh := br.mem.share(make([]byte, fanOutMax))
	br.mem.unshare(f, sh, 0)
	if bufFreeBytes.Load() == 0 {
		t.Fatal("a buffer given back is not on its free list")
	}
	deadline := time.Now().Add(3 * bufTrim)
	for bufFreeBytes.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d bytes still on the free lists %v after they were last used", bufFreeBytes.Load(), 3*bufTrim)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
