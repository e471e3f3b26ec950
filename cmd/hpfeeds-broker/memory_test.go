package main

import (
	"os"
	"path/filepath"
	"testing"
)

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

// The default budget follows the cgroup the broker runs in, not only the
// root's files: systemd's MemoryMax= is written in the unit's directory.
func TestCgroupLimit(t *testing.T) {
	root := t.TempDir()
	write := func(path, content string) {
		t.Helper()
		p := filepath.Join(root, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("memory.max", "max")
	write("system.slice/memory.max", "max")
	write("system.slice/hpfeeds.service/memory.max", "268435456")
	write("memory/memory.limit_in_bytes", "9223372036854771712")
	write("memory/docker/abc/memory.limit_in_bytes", "536870912")
	for _, c := range []struct {
		self string
		want int64
	}{
		{"0::/system.slice/hpfeeds.service\n", 256 << 20},
		{"0::/system.slice\n", 0},
		{"0::/\n", 0},
		{"12:memory:/docker/abc\n11:cpu,cpuacct:/docker/abc\n", 512 << 20},
		{"", 0},
	} {
		if got := cgroupLimitIn(root, []byte(c.self)); got != c.want {
			t.Errorf("%q: %d, want %d", c.self, got, c.want)
		}
	}
	write("system.slice/memory.max", "134217728") // a parent's limit bounds its children
	if got := cgroupLimitIn(root, []byte("0::/system.slice/hpfeeds.service\n")); got != 128<<20 {
		t.Errorf("under a smaller parent limit: %d", got)
	}
}
