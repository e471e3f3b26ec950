package retain

import (
	"bytes"
	"fmt"
	"sync"

	"github.com/klauspost/compress/s2"
)

// A batch is stored S2-compressed: every byte stored passes through several
// copies inside JetStream (its connection's read, the stream's ingest, the
// file store's cache and the disk), and sensors' events shrink about
// 3.5-fold, costing less to compress than those copies (docs/retention.md).
//
// A compressed batch starts with packedMagic. Its first four bytes read as
// a frame length of 0, which no frame has (a frame is at least 5 bytes), so
// a broker that predates compression reads no frame from it, rather than
// garbage, and a batch without the prefix is read as it is: the batches
// stored before compression.
const packedMagic = "\x00\x00\x00\x00s2"

// pack compresses a batch's frames, using scratch (grown as needed) for
// the encoding, and returns scratch and an exact-size copy of the result:
// that copy is held until the store acknowledges the batch, and a
// worst-case-sized buffer (the size of the frames) per batch in flight
// would hold some 3.5 times what the compressed events need.
func pack(scratch, data []byte) (grown, packed []byte) {
	n := len(packedMagic) + s2.MaxEncodedLen(len(data))
	if cap(scratch) < n {
		scratch = make([]byte, n)
	}
	scratch = scratch[:n]
	copy(scratch, packedMagic)
	enc := s2.Encode(scratch[len(packedMagic):], data)
	return scratch, append([]byte(nil), scratch[:len(packedMagic)+len(enc)]...)
}

// isPacked reports whether a stored batch was stored compressed.
func isPacked(data []byte) bool { return bytes.HasPrefix(data, []byte(packedMagic)) }

// unpack is a stored batch's frames, side by side: decompressed, into
// dst if its capacity is enough, if it was stored compressed. A batch that
// claims to decompress to more than limit bytes is refused before anything
// is allocated for it: ten bytes can claim 4 GiB.
func unpack(dst, data []byte, limit int) ([]byte, error) {
	if !isPacked(data) {
		return data, nil
	}
	src := data[len(packedMagic):]
	if n, err := s2.DecodedLen(src); err == nil && n > limit {
		return nil, fmt.Errorf("a stored batch claims %d bytes decompressed, more than the %d a batch can hold: a foreign or damaged message", n, limit)
	}
	frames, err := s2.Decode(dst, src)
	if err != nil {
		return nil, fmt.Errorf("a stored batch does not decompress: %w", err)
	}
	return frames, nil
}

// unpackedLen is the length of a stored batch's frames, without
// decompressing them: 0 for one unpack refuses (no length, or more than
// limit), as no frame is read from it.
func unpackedLen(data []byte, limit int) int {
	if !isPacked(data) {
		return len(data)
	}
	n, err := s2.DecodedLen(data[len(packedMagic):])
	if err != nil || n > limit {
		return 0
	}
	return n
}

// replayBufs holds the buffers batches are decompressed into for a
// catch-up, which copies their frames into the subscriber's queue at once:
// a new 256 KiB buffer per batch replayed would be garbage a moment later.
var replayBufs sync.Pool

// unpackForReplay is unpack into a buffer from replayBufs, returned with
// it (nil if the batch was not compressed) for Stored.Release.
func unpackForReplay(data []byte, limit int) (frames []byte, buf *[]byte, err error) {
	if !isPacked(data) {
		return data, nil, nil
	}
	buf, _ = replayBufs.Get().(*[]byte)
	if buf == nil {
		buf = new([]byte)
	}
	frames, err = unpack(*buf, data, limit)
	*buf = frames[:0]
	return frames, buf, err
}

// Release returns s's buffer for the next Read; s.Frames are not to be
// used after.
func (s *Stored) Release() {
	if s.buf != nil {
		replayBufs.Put(s.buf)
		s.buf = nil
	}
}
