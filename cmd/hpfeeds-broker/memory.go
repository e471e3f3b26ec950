package main

import (
	"bufio"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"

	"github.com/dustin/go-humanize"

	"github.com/hpfeeds-go/hpfeeds/broker"
)

// byteSize is a flag taking a size in bytes, with or without a suffix
// (256MiB, 1GB, 1048576).
type byteSize struct{ v *int64 }

func (b byteSize) String() string {
	if b.v == nil {
		return ""
	}
	return strings.ReplaceAll(humanize.IBytes(uint64(*b.v)), " ", "")
}

func (b byteSize) Set(s string) error {
	n, err := humanize.ParseBytes(s)
	if err != nil || n > math.MaxInt64/2 {
		return fmt.Errorf("%q is not a size: give bytes, or a number with a suffix such as 256MiB or 1GB", s)
	}
	*b.v = int64(n)
	return nil
}

func (b byteSize) Type() string { return "BYTES" }

// defaultMemoryLimit is the smaller of 1 GiB and a quarter of the memory
// the broker may use: the machine's, or its cgroup's if that is smaller.
func defaultMemoryLimit() int64 {
	total := meminfoTotal()
	if cg := cgroupLimit(); cg > 0 && (total == 0 || cg < total) {
		total = cg
	}
	if total <= 0 {
		return 1 << 30
	}
	return min(1<<30, total/4)
}

// meminfoTotal is MemTotal from /proc/meminfo, or 0.
func meminfoTotal() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if kb, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(kb, "kB")), 10, 64)
			return n << 10
		}
	}
	return 0
}

// cgroupLimit is the memory limit of the broker's cgroup (v2, then v1),
// or 0 if it has none.
func cgroupLimit() int64 {
	self, _ := os.ReadFile("/proc/self/cgroup")
	return cgroupLimitIn("/sys/fs/cgroup", self)
}

// cgroupLimitIn is the smallest memory limit on the way from the cgroup
// that /proc/self/cgroup (self) names up to the root, under root: a unit
// with MemoryMax= under systemd has its limit in its own directory, not at
// the root, and a parent's limit bounds its children too.
func cgroupLimitIn(root string, self []byte) int64 {
	var limit int64
	for _, line := range strings.Split(string(self), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		dir, file := root, "memory.max" // v2: "0::/path"
		if parts[0] != "0" || parts[1] != "" {
			if !slices.Contains(strings.Split(parts[1], ","), "memory") {
				continue
			}
			dir, file = filepath.Join(root, "memory"), "memory.limit_in_bytes"
		}
		for p := filepath.Join(dir, parts[2]); ; p = filepath.Dir(p) {
			if n := readLimit(filepath.Join(p, file)); n > 0 && (limit == 0 || n < limit) {
				limit = n
			}
			if p == dir || len(p) <= len(dir) {
				break
			}
		}
	}
	if limit == 0 { // no /proc/self/cgroup: the root's own files
		for _, p := range []string{filepath.Join(root, "memory.max"), filepath.Join(root, "memory", "memory.limit_in_bytes")} {
			if n := readLimit(p); n > 0 {
				return n
			}
		}
	}
	return limit
}

// readLimit reads one cgroup memory limit file: 0 for none, "max", or
// v1's "no limit".
func readLimit(path string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || n >= 1<<60 {
		return 0
	}
	return n
}

// applyMemoryLimit makes the Go runtime collect garbage before the heap
// outgrows the broker's budget, unless GOMEMLIMIT says otherwise.
func applyMemoryLimit(log *slog.Logger, budget int64) {
	if budget <= 0 {
		return
	}
	soft := broker.RuntimeMemoryLimit(budget)
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(soft)
	} else {
		soft = debug.SetMemoryLimit(-1)
	}
	log.Info("memory budget", "queues_and_partial_frames", byteSize{&budget}.String(), "go_memory_limit", byteSize{&soft}.String())
}
