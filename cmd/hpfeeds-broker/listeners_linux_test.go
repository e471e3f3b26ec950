package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// listeningSockets counts the TCP sockets pid has in the LISTEN state, from
// /proc: its socket inodes, matched against /proc/net/tcp and tcp6.
func listeningSockets(t *testing.T, pid int) int {
	t.Helper()
	fds, err := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
	if err != nil {
		t.Fatal(err)
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		if l, err := os.Readlink(fd); err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	n := 0
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(table)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			// sl local rem st tx:rx tr:when retrnsmt uid timeout inode …
			fields := strings.Fields(sc.Text())
			if len(fields) > 9 && fields[3] == "0A" && inodes[fields[9]] {
				n++
			}
		}
		f.Close()
	}
	return n
}

// Without --exporter the broker listens on its endpoints only (the Python
// broker always opened 0.0.0.0:8080).
func TestNoExporterNoListener(t *testing.T) {
	p := startBroker(t, false, "--auth=env", "-e", "tcp:interface=127.0.0.1:port=0")
	if n := listeningSockets(t, p.cmd.Process.Pid); n != 1 {
		t.Errorf("without --exporter: %d listening sockets, want 1 (the endpoint)", n)
	}
	p = startBroker(t, true, "--auth=env", "-e", "tcp:interface=127.0.0.1:port=0", "--exporter=127.0.0.1:0")
	if n := listeningSockets(t, p.cmd.Process.Pid); n != 2 {
		t.Errorf("with --exporter: %d listening sockets, want 2", n)
	}
}
