package wire

import (
	"bytes"
	"io"
	"testing"
)

func BenchmarkAppendPublish(b *testing.B) {
	payload := make([]byte, 256)
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		buf, _ = AppendPublish(buf[:0], []byte("ident"), []byte("chan"), payload)
	}
}

func BenchmarkSplit(b *testing.B) {
	frame, _ := AppendPublish(nil, []byte("ident"), []byte("chan"), make([]byte, 256))
	lim := UniformLimits(1 << 20)
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, n, _, err := Split(frame, &lim); n != len(frame) || err != nil {
			b.Fatal(n, err)
		}
	}
}

// BenchmarkReader reads a stream of 256-byte publishes through the Reader.
func BenchmarkReader(b *testing.B) {
	var stream []byte
	for i := 0; i < 1000; i++ {
		stream, _ = AppendPublish(stream, []byte("ident"), []byte("chan"), make([]byte, 256))
	}
	r := bytes.NewReader(stream)
	rd := NewReader(r, UniformLimits(1<<20))
	b.SetBytes(int64(len(stream) / 1000))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := rd.Next(); err == io.EOF {
			r.Reset(stream)
			i--
		} else if err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReaderFirstLargeFrame reads a 1 MiB publish on a fresh Reader,
// as a connection's first large frame arrives: in 64 KiB reads, into
// buffers that grow as its bytes do, then the stream ends.
func BenchmarkReaderFirstLargeFrame(b *testing.B) {
	frame, _ := AppendPublish(nil, []byte("ident"), []byte("chan"), make([]byte, 1<<20))
	src := &chunked{}
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		src.b, src.n = frame, 64<<10
		rd := NewReader(src, UniformLimits(2<<20))
		if _, err := rd.Next(); err != nil {
			b.Fatal(err)
		}
		if _, err := rd.Next(); err != io.EOF { // the buffer goes back to the pool
			b.Fatal(err)
		}
	}
}
