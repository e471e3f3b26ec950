package main

import "testing"

func TestByteSizeFlag(t *testing.T) {
	for in, want := range map[string]int64{"256MiB": 256 << 20, "1GB": 1e9, "1 GiB": 1 << 30, "4096": 4096, "0": 0} {
		var v int64
		if err := (byteSize{&v}).Set(in); err != nil || v != want {
			t.Errorf("%q: %d, %v; want %d", in, v, err, want)
		}
	}
	var v int64
	for _, in := range []string{"lots", "-1", "12XB", "99999999EiB"} {
		if err := (byteSize{&v}).Set(in); err == nil {
			t.Errorf("%q accepted as %d bytes", in, v)
		}
	}
	if d := defaultMemoryLimit(); d <= 0 || d > 1<<30 {
		t.Errorf("default memory limit %d, want (0, 1 GiB]", d)
	}
}
