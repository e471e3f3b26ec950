package wire

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The test vectors of the spec, section 1.
func TestVectors(t *testing.T) {
	info, err := AppendInfo(nil, "name", [4]byte{})
	if err != nil {
		t.Fatal(err)
	}
	auth, err := AppendAuth(nil, []byte{0, 0, 0, 0}, "ident", "secret")
	if err != nil {
		t.Fatal(err)
	}
	pub, err := AppendPublish(nil, []byte("ident"), []byte("chan"), []byte("payload"))
	if err != nil {
		t.Fatal(err)
	}
	sub, err := AppendSubscribe(nil, []byte("ident"), []byte("chan"))
	if err != nil {
		t.Fatal(err)
	}
	unsub, err := AppendUnsubscribe(nil, []byte("ident"), []byte("chan"))
	if err != nil {
		t.Fatal(err)
	}
	h := Hash([]byte("rand"), []byte("secret"))
	for _, c := range []struct {
		name string
		got  []byte
		want string
	}{
		{"INFO", info, "0000000e 01 04 6e616d65 00000000"},
		{"AUTH", auth, "0000001f 02 05 6964656e74 16a311d5c260cdc1eef38baf22df9718907426ac"},
		{"hash", h[:], "bfa95e1149cd9e7380fdfc614a57095ab719c1b4"},
		{"PUBLISH", pub, "00000017 03 05 6964656e74 04 6368616e 7061796c6f6164"},
		{"SUBSCRIBE", sub, "0000000f 04 05 6964656e74 6368616e"},
		{"UNSUBSCRIBE", unsub, "0000000f 05 05 6964656e74 6368616e"},
		{"ERROR", AppendError(nil, "error"), "0000000a 00 6572726f72"},
	} {
		if want := unhex(t, c.want); !bytes.Equal(c.got, want) {
			t.Errorf("%s: got %x, want %x", c.name, c.got, want)
		}
	}
}

func TestDecodeVectors(t *testing.T) {
	lim := UniformLimits(1 << 20)
	for _, c := range []struct {
		hex                     string
		op                      Op
		ident, channel, payload string
	}{
		{"0000000e 01 04 6e616d65 00000000", OpInfo, "name", "", "\x00\x00\x00\x00"},
		{"00000017 03 05 6964656e74 04 6368616e 7061796c6f6164", OpPublish, "ident", "chan", "payload"},
		{"0000000f 04 05 6964656e74 6368616e", OpSubscribe, "ident", "chan", ""},
		{"0000000f 05 05 6964656e74 6368616e", OpUnsubscribe, "ident", "chan", ""},
		{"0000000a 00 6572726f72", OpError, "", "", "error"},
	} {
		raw := unhex(t, c.hex)
		f, n, _, err := Split(raw, &lim)
		if err != nil || n != len(raw) {
			t.Fatalf("%s: n=%d err=%v", c.hex, n, err)
		}
		if f.Op != c.op || string(f.Ident) != c.ident || string(f.Channel) != c.channel || string(f.Payload) != c.payload {
			t.Errorf("%s: decoded %+v", c.hex, f)
		}
	}
}

// TestNextIntoOverwritesTheFrame decodes the vectors above through one
// Reader into one Frame, as the broker's read loop does: no field of a
// frame may survive into the next (a SUBSCRIBE after a PUBLISH has no
// payload, an ERROR after an UNSUBSCRIBE no ident or channel).
func TestNextIntoOverwritesTheFrame(t *testing.T) {
	var stream []byte
	for _, h := range []string{
		"00000017 03 05 6964656e74 04 6368616e 7061796c6f6164",
		"0000000f 04 05 6964656e74 6368616e",
		"0000000f 05 05 6964656e74 6368616e",
		"0000000a 00 6572726f72",
		"0000000e 01 04 6e616d65 00000000",
	} {
		stream = append(stream, unhex(t, h)...)
	}
	want := []Frame{
		{Op: OpPublish, Ident: []byte("ident"), Channel: []byte("chan"), Payload: []byte("payload")},
		{Op: OpSubscribe, Ident: []byte("ident"), Channel: []byte("chan")},
		{Op: OpUnsubscribe, Ident: []byte("ident"), Channel: []byte("chan")},
		{Op: OpError, Payload: []byte("error")},
		{Op: OpInfo, Ident: []byte("name"), Payload: []byte{0, 0, 0, 0}},
	}
	rd := NewReader(bytes.NewReader(stream), UniformLimits(1<<20))
	var f Frame
	off := 0
	for i, w := range want {
		if err := rd.NextInto(&f); err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		n := int(stream[off+3]) // every vector is under 256 bytes
		if f.Op != w.Op || !bytes.Equal(f.Raw, stream[off:off+n]) || !bytes.Equal(f.Ident, w.Ident) ||
			!bytes.Equal(f.Channel, w.Channel) || !bytes.Equal(f.Payload, w.Payload) {
			t.Errorf("frame %d: decoded %+v, want %+v", i, f, w)
		}
		off += n
	}
	if err := rd.NextInto(&f); err != io.EOF {
		t.Fatalf("after the last frame: %v, want EOF", err)
	}
}

func TestMalformed(t *testing.T) {
	lim := UniformLimits(1000)
	for _, c := range []struct {
		name string
		hex  string
		err  error
	}{
		{"length 0", "00000000 03", ErrShortLength},
		{"length 4", "00000004 03", ErrShortLength},
		{"negative length", "ffffffff 03", ErrTooLarge},
		{"over limit", "000003e9 03", ErrTooLarge},
		{"unknown opcode", "00000005 06", ErrUnknownOp},
		{"opcode 255", "00000005 ff", ErrUnknownOp},
		{"empty publish body", "00000005 03", ErrBadBody},
		{"ident longer than body", "00000007 03 05 41", ErrBadBody},
		{"channel longer than body", "00000009 03 01 41 09 42", ErrBadBody},
		{"empty auth body", "00000005 02", ErrBadBody},
		{"empty subscribe body", "00000005 04", ErrBadBody},
	} {
		_, _, _, err := Split(unhex(t, c.hex), &lim)
		if !errors.Is(err, c.err) {
			t.Errorf("%s: err %v, want %v", c.name, err, c.err)
		}
	}
	// A header alone asks for the rest of the frame.
	_, n, want, err := Split(unhex(t, "00000017 03"), &lim)
	if n != 0 || want != 0x17 || err != nil {
		t.Errorf("partial frame: n=%d want=%d err=%v", n, want, err)
	}
}

func TestEncodeRefusesOversizedStr8(t *testing.T) {
	long := bytes.Repeat([]byte("x"), 256)
	if _, err := AppendPublish(nil, long, []byte("c"), nil); err == nil {
		t.Error("256-byte ident accepted")
	}
	if _, err := AppendPublish(nil, []byte("i"), long, nil); err == nil {
		t.Error("256-byte channel accepted")
	}
	if _, err := AppendInfo(nil, string(long), [4]byte{}); err == nil {
		t.Error("256-byte name accepted")
	}
	if _, err := AppendSubscribe(nil, []byte("i"), long); err != nil {
		t.Errorf("long channel in SUBSCRIBE refused: %v", err)
	}
}

// oneByteReader hands out one byte per Read, the worst a network can do.
type oneByteReader struct{ r io.Reader }

func (o oneByteReader) Read(p []byte) (int, error) { return o.r.Read(p[:1]) }

func TestReaderReassembles(t *testing.T) {
	var stream []byte
	big := bytes.Repeat([]byte("B"), 200<<10)
	for i := 0; i < 3; i++ {
		stream, _ = AppendPublish(stream, []byte("ident"), []byte("chan"), []byte("small"))
		stream, _ = AppendPublish(stream, []byte("ident"), []byte("chan"), big)
	}
	for _, r := range []io.Reader{bytes.NewReader(stream), oneByteReader{bytes.NewReader(stream)}} {
		rd := NewReader(r, UniformLimits(1<<20))
		for i := 0; i < 6; i++ {
			f, err := rd.Next()
			if err != nil {
				t.Fatalf("frame %d: %v", i, err)
			}
			want := []byte("small")
			if i%2 == 1 {
				want = big
			}
			if !bytes.Equal(f.Payload, want) {
				t.Fatalf("frame %d: payload of %d bytes", i, len(f.Payload))
			}
		}
		if _, err := rd.Next(); err != io.EOF {
			t.Fatalf("after last frame: %v", err)
		}
	}
}

// quietAfter serves data, then records the room the reader offers for
// what comes next: the buffer a connection holds while it waits.
type quietAfter struct {
	data  []byte
	offer int
}

func (q *quietAfter) Read(p []byte) (int, error) {
	if len(q.data) == 0 {
		q.offer = len(p)
		return 0, io.EOF
	}
	n := copy(p, q.data)
	q.data = q.data[n:]
	return n, nil
}

// A connection that sent one large frame and went quiet waits with a
// small buffer, not one the size of that frame.
func TestReaderShrinksWhenQuietAfterLargeFrame(t *testing.T) {
	for _, size := range []int{200 << 10, 1 << 20} {
		frame, _ := AppendPublish(nil, []byte("ident"), []byte("chan"), bytes.Repeat([]byte("B"), size))
		src := &quietAfter{data: frame}
		rd := NewReader(src, UniformLimits(2<<20))
		if _, err := rd.Next(); err != nil {
			t.Fatal(err)
		}
		if _, err := rd.Next(); err != io.EOF {
			t.Fatalf("after the frame: %v", err)
		}
		if src.offer > MaxReadBuf {
			t.Errorf("%d-byte frame: the next read was offered %d bytes", size, src.offer)
		}
	}
}

func TestReaderTruncated(t *testing.T) {
	frame, _ := AppendPublish(nil, []byte("i"), []byte("c"), []byte("payload"))
	rd := NewReader(bytes.NewReader(frame[:len(frame)-1]), UniformLimits(100))
	if _, err := rd.Next(); err != io.ErrUnexpectedEOF {
		t.Fatalf("got %v, want io.ErrUnexpectedEOF", err)
	}
}

func FuzzSplit(f *testing.F) {
	for _, s := range []string{
		"00000017 03 05 6964656e74 04 6368616e 7061796c6f6164",
		"0000001f 02 05 6964656e74 16a311d5c260cdc1eef38baf22df9718907426ac",
		"0000000f 04 05 6964656e74 6368616e",
		"0000000e 01 04 6e616d65 00000000",
		"00000005 03", "00000000 00", "ffffffff 03", "00000005 06", "00000007 03 05 41",
		"00000009 03 01 41 09 42",
	} {
		f.Add(unhex(f, s))
	}
	lim := UniformLimits(1 << 16)
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, n, want, err := Split(b, &lim)
		if err != nil {
			return
		}
		if n == 0 {
			if want < HeaderLen || want <= len(b) && len(b) >= HeaderLen {
				t.Fatalf("incomplete with want=%d for %d bytes", want, len(b))
			}
			return
		}
		if n > len(b) || len(fr.Raw) != n {
			t.Fatalf("frame of %d bytes from %d", n, len(b))
		}
		// Whatever decodes re-encodes to the same bytes.
		var re []byte
		switch fr.Op {
		case OpPublish:
			re, err = AppendPublish(nil, fr.Ident, fr.Channel, fr.Payload)
		case OpSubscribe:
			re, err = AppendSubscribe(nil, fr.Ident, fr.Channel)
		case OpError:
			re = AppendError(nil, string(fr.Payload))
		default:
			return
		}
		if err != nil || !bytes.Equal(re, fr.Raw) {
			t.Fatalf("re-encoding %x gave %x (%v)", fr.Raw, re, err)
		}
	})
}

// A large frame's buffer grows with the bytes that arrived, not with the
// length its header declares, and Pending shows its first fields before
// its body is in.
func TestReaderBuffersAsBytesArrive(t *testing.T) {
	frame, _ := AppendPublish(nil, []byte("ident"), []byte("chan"), bytes.Repeat([]byte("x"), 10<<20))
	errStop := errors.New("stop")
	for _, got := range []int{HeaderLen, 100, 300 << 10, 3 << 20} {
		r := io.MultiReader(bytes.NewReader(frame[:got]), iotest.ErrReader(errStop))
		rd := NewReader(r, UniformLimits(11<<20))
		if _, err := rd.Next(); err != errStop {
			t.Fatalf("%d bytes: %v", got, err)
		}
		if max := max(MaxReadBuf, got*3/2); rd.BufSize() > max {
			t.Errorf("%d bytes of a 10 MiB frame in: buffer of %d bytes, want at most %d", got, rd.BufSize(), max)
		}
		if p := rd.Pending(); !bytes.Equal(p, frame[:len(p)]) || len(p) < min(got, spillFrom) {
			t.Errorf("%d bytes in: Pending has %d bytes", got, len(p))
		}
		if n := rd.Buffered(); n != got {
			t.Errorf("%d bytes in: Buffered says %d", got, n)
		}
	}
}

func TestPublishHead(t *testing.T) {
	frame, _ := AppendPublish(nil, []byte("ident"), []byte("chan"), []byte("payload"))
	headLen := HeaderLen + 1 + 5 + 1 + 4
	for n := 0; n <= len(frame); n++ {
		ident, channel, ok := PublishHead(frame[:n])
		if ok != (n >= headLen) || ok && (string(ident) != "ident" || string(channel) != "chan") {
			t.Errorf("%d bytes: %q %q %v", n, ident, channel, ok)
		}
	}
	sub, _ := AppendSubscribe(nil, []byte("ident"), []byte("chan"))
	if _, _, ok := PublishHead(sub); ok {
		t.Error("SUBSCRIBE read as a PUBLISH")
	}
}

// countingReader counts the reads a Reader makes.
type countingReader struct {
	r     io.Reader
	reads int
}

func (c *countingReader) Read(p []byte) (int, error) { c.reads++; return c.r.Read(p) }

// Frames a little over the smallest buffer, straddling every read, still
// get batched reads: the buffer grows while reads fill it.
func TestReaderBatchesStraddlingFrames(t *testing.T) {
	var stream []byte
	const n = 2000
	for range n {
		stream, _ = AppendPublish(stream, []byte("bench"), []byte("bench"), make([]byte, 256))
	}
	cr := &countingReader{r: bytes.NewReader(stream)}
	rd := NewReader(cr, UniformLimits(1<<20))
	for i := range n {
		if _, err := rd.Next(); err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
	}
	if cr.reads > n/20 {
		t.Errorf("%d reads for %d frames of %d bytes", cr.reads, n, len(stream)/n)
	}
}

// burstReader is a stream of the same burst over and over, read at most a
// burst at a time, as from a sensor that sends a burst now and then.
type burstReader struct {
	burst []byte
	off   int
}

func (b *burstReader) Read(p []byte) (int, error) {
	n := copy(p, b.burst[b.off:])
	b.off = (b.off + n) % len(b.burst)
	return n, nil
}

// Bursts a little larger than the buffer (a read that fills it, then a
// short one with the rest) do not make it shrink and grow again, a new
// buffer each time, on every burst.
func TestReaderKeepsItsSizeForBurstsOverIt(t *testing.T) {
	frame, _ := AppendPublish(nil, []byte("ident"), []byte("chan"), make([]byte, 256))
	const perBurst = 64 // 17,856 bytes: over 16 KiB
	rd := NewReader(&burstReader{burst: bytes.Repeat(frame, perBurst)}, UniformLimits(1<<20))
	burst := func() {
		for range perBurst {
			if _, err := rd.Next(); err != nil {
				t.Fatal(err)
			}
		}
	}
	for range 10 {
		burst() // the buffer grows to fit
	}
	if a := testing.AllocsPerRun(50, burst); a != 0 {
		t.Errorf("%.1f allocations a burst of %d bytes, with a %d-byte buffer", a, len(frame)*perBurst, rd.BufSize())
	}
}

// A frame of 64 KiB or less also gets room only as its bytes arrive: a
// header that declares 64 KiB costs a few hundred bytes, not 64 KiB.
func TestReaderSmallFrameBuffersAsBytesArrive(t *testing.T) {
	frame, _ := AppendPublish(nil, []byte("ident"), []byte("chan"), bytes.Repeat([]byte("x"), 60<<10))
	errStop := errors.New("stop")
	for _, got := range []int{HeaderLen, 600, 20 << 10} {
		r := io.MultiReader(bytes.NewReader(frame[:got]), iotest.ErrReader(errStop))
		rd := NewReader(r, UniformLimits(1<<20))
		if _, err := rd.Next(); err != errStop {
			t.Fatalf("%d bytes: %v", got, err)
		}
		if max := max(minReadBuf, 2*got); rd.BufSize() > max {
			t.Errorf("%d bytes of a 60 KiB frame in: buffer of %d bytes, want at most %d", got, rd.BufSize(), max)
		}
	}
}

// After a large frame, a smaller partial frame neither takes a pooled
// buffer far larger than it nor hides one: BufSize is the memory held.
func TestReaderCountsPooledBufferCapacity(t *testing.T) {
	big, _ := AppendPublish(nil, []byte("i"), []byte("c"), bytes.Repeat([]byte("B"), 8<<20))
	rd := NewReader(bytes.NewReader(big), UniformLimits(9<<20))
	if _, err := rd.Next(); err != nil {
		t.Fatal(err)
	}
	rd.Next() // EOF: the large buffer goes back to the pool
	small, _ := AppendPublish(nil, []byte("i"), []byte("c"), bytes.Repeat([]byte("s"), 1<<20))
	errStop := errors.New("stop")
	for range 4 { // a pooled buffer may or may not come back; either way
		rd = NewReader(io.MultiReader(bytes.NewReader(small[:100<<10]), iotest.ErrReader(errStop)), UniformLimits(2<<20))
		if _, err := rd.Next(); err != errStop {
			t.Fatal(err)
		}
		if rd.BufSize() > 2*(100<<10)*3/2 {
			t.Errorf("100 KiB of a frame in: %d bytes held", rd.BufSize())
		}
	}
}

// Wait reads until a whole frame is buffered and leaves a refused header to
// Next, which reports it; after Wait, Next does not read.
func TestReaderWait(t *testing.T) {
	frame, _ := AppendPublish(nil, []byte("i"), []byte("c"), []byte("payload"))
	rd := NewReader(iotest.OneByteReader(bytes.NewReader(frame)), UniformLimits(100))
	if err := rd.Wait(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rd.Pending(), frame) {
		t.Fatalf("buffered %x after Wait, want the frame %x", rd.Pending(), frame)
	}
	rd.r = errReader{} // Next must not read again
	if f, err := rd.Next(); err != nil || !bytes.Equal(f.Raw, frame) {
		t.Fatalf("Next after Wait: %v, %x", err, f.Raw)
	}

	big := NewReader(bytes.NewReader(frame), UniformLimits(10))
	if err := big.Wait(); err != nil {
		t.Fatalf("Wait on a refused header: %v, want nil (Next reports it)", err)
	}
	if _, err := big.Next(); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Next on a refused header: %v, want ErrTooLarge", err)
	}
}

// Ready is true only when Next will not read, and while it is, the frames
// Next returned before stay as they were: the broker queues a read's frames
// from the buffer before it reads again.
func TestReaderReady(t *testing.T) {
	a, _ := AppendPublish(nil, []byte("i"), []byte("c"), []byte("first"))
	b, _ := AppendPublish(nil, []byte("i"), []byte("c"), []byte("second"))
	stream := append(append(append([]byte{}, a...), b...), b[:7]...)
	rd := NewReader(bytes.NewReader(stream), UniformLimits(100))
	if rd.Ready() {
		t.Fatal("Ready before anything was read")
	}
	if err := rd.Wait(); err != nil {
		t.Fatal(err)
	}
	rd.r = errReader{}
	var kept [][]byte
	for range 2 {
		if !rd.Ready() {
			t.Fatalf("not Ready with %x buffered", rd.Pending())
		}
		f, err := rd.Next()
		if err != nil {
			t.Fatal(err)
		}
		kept = append(kept, f.Raw)
	}
	if rd.Ready() {
		t.Fatalf("Ready with a partial frame %x buffered", rd.Pending())
	}
	if !bytes.Equal(kept[0], a) || !bytes.Equal(kept[1], b) {
		t.Fatalf("frames kept across calls changed: %x %x", kept[0], kept[1])
	}
	// A length Next refuses without reading may be Ready.
	short := NewReader(bytes.NewReader([]byte{0, 0, 0, 1, 3}), UniformLimits(100))
	if err := short.Wait(); err != nil {
		t.Fatal(err)
	}
	if !short.Ready() {
		t.Fatal("not Ready on a header Next refuses")
	}
	if _, err := short.Next(); !errors.Is(err, ErrShortLength) {
		t.Fatalf("Next: %v, want ErrShortLength", err)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("read after Wait") }

// A large frame arriving costs about what arrived, not a trail of
// outgrown copies of its start left for the garbage collector (the
// partial-frame attacks peaked at 236 MiB so, with 48 MiB of frames
// counted), and Release gives it all back.
func TestReaderLargeFrameAllocatesWhatArrived(t *testing.T) {
	frame, _ := AppendPublish(nil, []byte("ident"), []byte("chan"), make([]byte, 10<<20))
	errStop := errors.New("stop")
	for _, got := range []int{1 << 20, 9 << 20, len(frame)} {
		r := io.MultiReader(bytes.NewReader(frame[:got]), iotest.ErrReader(errStop))
		rd := NewReader(r, UniformLimits(11<<20))
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err := rd.Next()
		runtime.ReadMemStats(&after)
		if got < len(frame) && err != errStop || got == len(frame) && err != nil {
			t.Fatalf("%d bytes: %v", got, err)
		}
		// A whole frame is made whole once more, in one buffer.
		limit := got * 3 / 2
		if got == len(frame) {
			limit = got * 5 / 2
		}
		if n := int(after.TotalAlloc - before.TotalAlloc); n > limit {
			t.Errorf("%d bytes of a %d-byte frame in: %d bytes allocated, want at most %d", got, len(frame), n, limit)
		}
		rd.Release()
		if n := rd.BufSize(); n != 0 {
			t.Errorf("%d bytes in: %d bytes held after Release", got, n)
		}
	}
}

// Frames larger than spillFrom come out whole whatever the reads that
// bring them, alone or between others, around every chunk boundary.
func TestReaderSpilledFramesReassemble(t *testing.T) {
	var stream []byte
	var payloads [][]byte
	for i, size := range []int{10, spillFrom, 5000, 20000, MaxReadBuf, 3 * maxChunk, 3*maxChunk + 1, 100, 200 << 10, 1 << 20, 7} {
		p := bytes.Repeat([]byte{byte('a' + i)}, size)
		payloads = append(payloads, p)
		stream, _ = AppendPublish(stream, []byte("ident"), []byte("chan"), p)
	}
	for _, n := range []int{3, 1000, maxChunk - 1, maxChunk, 50000, 1 << 20} {
		rd := NewReader(&chunked{b: stream, n: n}, UniformLimits(2<<20))
		for i, want := range payloads {
			f, err := rd.Next()
			if err != nil {
				t.Fatalf("reads of %d bytes, frame %d: %v", n, i, err)
			}
			if !bytes.Equal(f.Payload, want) {
				t.Fatalf("reads of %d bytes, frame %d: payload of %d bytes, want %d", n, i, len(f.Payload), len(want))
			}
		}
		if _, err := rd.Next(); err != io.EOF || rd.Buffered() != 0 {
			t.Fatalf("reads of %d bytes, after the last frame: %v, %d bytes buffered", n, err, rd.Buffered())
		}
	}
}
