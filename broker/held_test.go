package broker

import (
	"bytes"
	"testing"
	"unsafe"

	"github.com/hpfeeds-go/hpfeeds/auth"
)

// A frame a queue copied into its chunk must never look held (isHeld):
// the writer would otherwise count a hold that does not exist, in memory
// before the frame. The boundary is a frame that exactly fills the
// chunk's room.
func TestChunkCopiesAreNotHeld(t *testing.T) {
	br, err := New(Config{Auth: auth.Chain{}})
	if err != nil {
		t.Fatal(err)
	}
	q := &newConn(br, &discardConn{}, ModePubSub, "t").q
	q.mu.Lock()
	defer q.mu.Unlock()
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
	for _, n := range []int{pageAlignFrom + 1, 1 << 20} {
		raw := bytes.Repeat([]byte{9}, n)
		f := newHeld(raw, 3)
		if addr := uintptr(unsafe.Pointer(unsafe.SliceData(f))); addr%4096 != 0 {
			t.Errorf("%d bytes: frame at %#x, %d into its page", n, addr, addr%4096)
		}
		if !isHeld(f) || holdOf(f).refs.Load() != 3 || !bytes.Equal(f, raw) {
			t.Errorf("%d bytes: held %v, count %d, same bytes %v", n, isHeld(f), holdOf(f).refs.Load(), bytes.Equal(f, raw))
		}
	}
	if f := newHeld(make([]byte, pageAlignFrom), 1); uintptr(unsafe.Pointer(unsafe.SliceData(f)))%4096 == 0 {
		t.Errorf("a %d-byte frame was given a page of headroom", pageAlignFrom)
	}
}
