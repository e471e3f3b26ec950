package retain

import (
	"bytes"
	"context"
	"encoding/binary"
	"runtime"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/hpfeeds-go/hpfeeds/internal/loadgen"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

// Batches are stored compressed, and read back as they were appended.
func TestBatchesStoredCompressed(t *testing.T) {
	e := open(t, t.TempDir())
	defer e.Close()
	ch := e.Channel("events")
	ctx := context.Background()
	p, err := ch.Resolve(ctx, appendN(t, ch, 0, 200))
	if err != nil {
		t.Fatal(err)
	}
	m, err := e.stream.GetMsg(ctx, p.Seq-1)
	if err != nil {
		t.Fatal(err)
	}
	var raw []byte
	for i := range 200 {
		raw = append(raw, frame(t, i)...)
	}
	if !isPacked(m.Data) || len(m.Data) >= len(raw) {
		t.Fatalf("stored %d bytes starting %q; want fewer than the frames' %d, compressed", len(m.Data), m.Data[:min(8, len(m.Data))], len(raw))
	}
	if got := strings.Join(readAll(t, ch, Pos{1, 0}), ","); !strings.HasPrefix(got, "0,1,2,") || !strings.HasSuffix(got, ",198,199") || strings.Count(got, ",") != 199 {
		t.Errorf("read back %s", got)
	}
	if st := ch.Stats(ctx); st.Messages != 200 || st.Bytes != uint64(len(raw)) {
		t.Errorf("stats %+v, want 200 messages of %d bytes", st, len(raw))
	}
}

// A store written before batches were compressed is read as it is, a
// batch that does not decompress is skipped, as is one that claims more
// than a batch can hold (before allocating it), and a broker that predates
// compression reads no frame from a compressed batch (appendFrames is its
// reader), rather than garbage.
func TestStoredFormatCompatibility(t *testing.T) {
	e := open(t, t.TempDir())
	defer e.Close()
	ch := e.Channel("events")
	old := append(frame(t, 1), frame(t, 2)...)
	corrupt := append([]byte(packedMagic), "not S2"...)
	// Ten bytes claiming 4 GiB decompressed.
	bomb := append(binary.AppendUvarint([]byte(packedMagic), 1<<32-1), 0, 0, 0)
	for _, data := range [][]byte{old, corrupt, bomb, frame(t, 3)} {
		if _, err := e.js.PublishMsg(context.Background(), &nats.Msg{Subject: ch.subject, Data: data}); err != nil {
			t.Fatal(err)
		}
	}
	if got := strings.Join(readAll(t, ch, Pos{1, 0}), ","); got != "1,2,3" {
		t.Errorf("uncompressed batches around one that does not decompress read back as %q, want 1,2,3", got)
	}

	_, packed := pack(nil, old)
	if n := len(appendFrames(nil, packed, 0)); n != 0 {
		t.Errorf("the uncompressed reader found %d frames in a compressed batch", n)
	}
	data, err := unpack(nil, packed, len(old))
	if err != nil || !bytes.Equal(data, old) || unpackedLen(packed, len(old)) != len(old) {
		t.Errorf("round trip: %v, equal %v, length %d", err, bytes.Equal(data, old), unpackedLen(packed, len(old)))
	}
	if _, err := unpack(nil, packed, len(old)-1); err == nil {
		t.Error("a batch larger than the limit decoded")
	}
	for _, data := range [][]byte{old, packed} { // batches without the frame count header
		if n := framesIn(&jetstream.RawStreamMsg{Data: data}, len(old)); n != 2 {
			t.Errorf("framesIn counted %d frames, want 2", n)
		}
	}
	if _, err := unpack(nil, packed[:len(packed)-3], len(old)); err == nil {
		t.Error("a cut compressed batch decoded")
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	n := framesIn(&jetstream.RawStreamMsg{Data: bomb}, e.maxBatch())
	runtime.ReadMemStats(&after)
	if n != 0 || after.TotalAlloc-before.TotalAlloc > 1<<20 {
		t.Errorf("a batch claiming 4 GiB: %d frames, %d bytes allocated to count them", n, after.TotalAlloc-before.TotalAlloc)
	}
	if n := unpackedLen(bomb, e.maxBatch()); n != 0 {
		t.Errorf("a batch claiming 4 GiB counts as %d bytes of frames", n)
	}
}

// BenchmarkPack compresses a full batch of the bench's 256-byte event
// payloads as the store's publisher does, and decompresses it as a
// catch-up does (docs/retention.md quotes it).
func BenchmarkPack(b *testing.B) {
	var data []byte
	for _, body := range loadgen.Bodies(256) {
		f, _ := wire.AppendPublish(nil, []byte("bench"), []byte("bench"), append(make([]byte, loadgen.MinSize), body...))
		if len(data)+len(f) > DefaultBatchBytes {
			break
		}
		data = append(data, f...)
	}
	scratch, packed := pack(nil, data)
	b.Run("pack", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			scratch, _ = pack(scratch, data)
		}
		b.ReportMetric(float64(len(data))/float64(len(packed)), "ratio")
	})
	b.Run("unpack", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			var s Stored
			_, s.buf, _ = unpackForReplay(packed, len(data))
			s.Release()
		}
	})
}
