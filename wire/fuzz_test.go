package wire

import (
	"bytes"
	"io"
	"testing"
)

// chunked hands out its data at most n bytes per Read, so frames straddle
// reads at every offset the fuzzer picks.
type chunked struct {
	b []byte
	n int
}

func (c *chunked) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), c.n, len(c.b))
	copy(p, c.b[:n])
	c.b = c.b[n:]
	return n, nil
}

// FuzzReader feeds arbitrary streams, cut into arbitrary reads, to a
// Reader: it must end (the 5-byte frame that looped the Python broker
// forever), never panic (the length byte that crashed a Go broker), never
// return a frame over its limit, and return exactly the stream's bytes.
func FuzzReader(f *testing.F) {
	for _, s := range []string{
		"00000017 03 05 6964656e74 04 6368616e 7061796c6f6164",
		"0000001f 02 05 6964656e74 16a311d5c260cdc1eef38baf22df9718907426ac",
		"00000005 03", "00000005 02", "00000000 00", "00000004 01", "ffffffff 03", "7fffffff 02",
		"00000005 06", "00000005 ff", "00000007 03 05 41", "00000009 03 01 41 09 42",
		"0000000a 04 ff 41", "00000006 04 00", "00000007 02 00 00",
		"00000005 03 00000005 03 00000005 03",
		"00000017 03 05 6964656e74 04 6368616e 7061796c6f6164 00000017 03 05 6964",
	} {
		f.Add(unhex(f, s), uint8(1), uint16(64))
		f.Add(unhex(f, s), uint8(7), uint16(5))
	}
	f.Fuzz(func(t *testing.T, b []byte, chunk uint8, limit uint16) {
		lim := UniformLimits(max(int(limit), HeaderLen))
		rd := NewReader(&chunked{b: b, n: max(int(chunk), 1)}, lim)
		var got []byte
		for i := 0; ; i++ {
			if i > len(b) {
				t.Fatalf("more than %d frames from %d bytes", i, len(b))
			}
			fr, err := rd.Next()
			if err != nil {
				break
			}
			if len(fr.Raw) < HeaderLen || len(fr.Raw) > lim[fr.Op] {
				t.Fatalf("frame of %d bytes past limit %d", len(fr.Raw), lim[fr.Op])
			}
			got = append(got, fr.Raw...)
		}
		if !bytes.HasPrefix(b, got) {
			t.Fatalf("frames %x are not the stream's bytes %x", got, b)
		}
	})
}
