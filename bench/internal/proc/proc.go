// Package proc reads a process's memory from /proc, for the benchmark
// programs that measure a broker from outside.
package proc

import (
	"fmt"
	"os"
	"strings"
)

// StatusKiB returns a kB field of /proc/PID/status: VmRSS (resident now)
// or VmHWM (peak resident), in KiB; -1 if the process or field is gone.
func StatusKiB(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			var kb int64
			fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(v), " kB"), &kb)
			return kb
		}
	}
	return -1
}
