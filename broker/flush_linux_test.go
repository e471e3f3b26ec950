package broker

import (
	"bytes"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hpfeeds-go/hpfeeds/auth"
)

// pipeRaw is a RawConn over one end of a pipe of one page: writes that do
// not fit are cut where the page ends, whatever the frames.
type pipeRaw struct{ fd int }

func (p pipeRaw) Control(f func(uintptr)) error       { f(uintptr(p.fd)); return nil }
func (p pipeRaw) Read(f func(uintptr) bool) error     { f(uintptr(p.fd)); return nil }
func (p pipeRaw) Write(f func(fd uintptr) bool) error { f(uintptr(p.fd)); return nil }

// recordConn keeps what the writer goroutine writes.
type recordConn struct {
	discardConn
	mu  sync.Mutex
	buf bytes.Buffer
}

func (r *recordConn) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.buf.Write(p)
}

func (r *recordConn) bytes() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Clone(r.buf.Bytes())
}

// An inline flush the socket cuts in the middle of a frame leaves the
// frame's rest and the frames after it to the writer goroutine, which
// writes them, once each and in order, before anything queued later.
func TestInlineFlushCutMidFrame(t *testing.T) {
	br, err := New(Config{Auth: auth.Chain{}})
	if err != nil {
		t.Fatal(err)
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	if _, err := unix.FcntlInt(uintptr(p[1]), unix.F_SETPIPE_SZ, 4096); err != nil {
		t.Fatal(err)
	}
	rec := &recordConn{}
	sub := newConn(br, rec, ModePubSub, "t")
	q := &sub.q
	q.raw = pipeRaw{p[1]}
	pub := newConn(br, &discardConn{}, ModePubSub, "t")

	var want bytes.Buffer
	push := func(i int) {
		raw := bytes.Repeat([]byte{byte('a' + i%26)}, 1000)
		want.Write(raw)
		q.push(raw, len(raw), nil, pub)
	}
	for i := range 10 {
		push(i)
	}
	if len(pub.later) != 1 || !q.flushInline(pub.later[0].start) {
		t.Fatal("the inline flush did not act on the wake-up")
	}
	pub.later = pub.later[:0]
	// Frames queued after the cut go after the rest of the cut ones.
	for i := 10; i < 20; i++ {
		push(i)
	}
	pub.wakeWriters()

	piped := make([]byte, 8192)
	n, err := unix.Read(p[0], piped)
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 || n%1000 == 0 {
		t.Fatalf("the pipe took %d bytes: not a cut inside a frame", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(rec.bytes())+n < want.Len() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	got := append(piped[:n], rec.bytes()...)
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("%d bytes through the pipe and %d through the writer; want %d, the same", n, len(got)-n, want.Len())
	}
	for q.queuedBytes() != 0 || br.mem.used.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("queued %d, budget %d after all was written", q.queuedBytes(), br.mem.used.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
}
