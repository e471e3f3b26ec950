package loadgen

import (
	"bytes"
	"testing"

	"github.com/klauspost/compress/s2"
)

// The bodies are the same for every run, differ from one another, and
// compress as sensors' JSON events do (about fourfold), not as zeros do.
func TestBodiesCompressLikeEvents(t *testing.T) {
	for _, size := range []int{256, 1024, 1 << 20} {
		bodies := Bodies(size)
		if again := Bodies(size); !bytes.Equal(bytes.Join(bodies, nil), bytes.Join(again, nil)) {
			t.Fatalf("size %d: bodies differ between calls", size)
		}
		var batch []byte
		for i, b := range bodies {
			if len(b) != size-MinSize {
				t.Fatalf("size %d: body %d has %d bytes", size, i, len(b))
			}
			if i > 0 && bytes.Equal(b, bodies[i-1]) {
				t.Fatalf("size %d: bodies %d and %d are the same", size, i-1, i)
			}
			batch = append(batch, b...)
		}
		ratio := float64(len(batch)) / float64(len(s2.Encode(nil, batch)))
		t.Logf("size %d: %d bodies, %d bytes, S2 %.2fx", size, len(bodies), len(batch), ratio)
		if ratio < 2 || ratio > 8 {
			t.Errorf("size %d: S2 compresses the bodies %.2fx; want 2 to 8x, as events", size, ratio)
		}
	}
	if Varying(256) != 256 || Varying(1<<20) != MinSize {
		t.Errorf("Varying: %d for 256 B, %d for 1 MiB", Varying(256), Varying(1<<20))
	}
}
