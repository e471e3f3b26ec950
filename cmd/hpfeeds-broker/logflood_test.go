package main

import (
	"flag"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

// byteCount counts what the broker writes to stderr, keeping the first
// MiB: a line of any size cannot stall it, as a line scanner would.
type byteCount struct {
	mu    sync.Mutex
	total int
	kept  strings.Builder
}

func (b *byteCount) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.total += len(p)
	if b.kept.Len() < 1<<20 {
		b.kept.Write(p)
	}
	return len(p), nil
}

func (b *byteCount) read() (int, string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.total, b.kept.String()
}

var attackFor = flag.Duration("attack-for", 3*time.Second, "how long TestLogBytesUnderAttack attacks")

var loginsLeftOut = regexp.MustCompile(`msg="login lines left out: over 20 a minute from this source" source=127.0.0.1/32 suppressed=(\d+)`)

// The attacks of issue 21 against the real binary: 8 clients of one
// address in a loop of login, refused SUBSCRIBE (of a 200 KiB channel, or
// a short one) and disconnect, for -attack-for (3 s) or 700 logins a second. The log keeps 20 login and 20 disconnect
// lines a minute from the address and says how many it left out; the
// bytes it writes are bounded whatever the clients send. Run with -v for
// the bytes per second (docs/reliability.md), and past a minute to see the
// summary lines that bound a sustained attack.
func TestLogBytesUnderAttack(t *testing.T) {
	for _, c := range []struct {
		name    string
		channel int
	}{{"refused subscribes of 200 KiB", 200 << 10}, {"login and disconnect", 2}} {
		t.Run(c.name, func(t *testing.T) {
			port := freePort(t)
			cmd, log := startCounted(t, []string{"HPFEEDS_READER_SECRET=s", "HPFEEDS_READER_SUBCHANS=ok"},
				"--auth=env", "-e", "tcp:interface=127.0.0.1:port="+port)
			addr := "127.0.0.1:" + port
			before, _ := log.read()
			channel := strings.Repeat("\x1b[2J", c.channel/4) + "no"
			var logins atomic.Int64
			maxLogins := int64(700 * attackFor.Seconds())
			start := time.Now()
			var wg sync.WaitGroup
			for range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					// Bounded in count too: each login leaves a socket in
					// TIME_WAIT, and the machine's ports are shared.
					for time.Since(start) < *attackFor && logins.Load() < maxLogins {
						cl := brokertest.Login(t, addr, "reader", "s")
						cl.Send(brokertest.Subscribe(t, "reader", channel))
						cl.ExpectError(wire.NotAllowed(wire.ErrNoSubscribePrefix, "reader", channel))
						cl.Conn.Close()
						logins.Add(1)
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
			total, text := log.read()
			written := total - before
			t.Logf("%d logins in %v: %d bytes of log, %.0f bytes/s", logins.Load(), elapsed.Round(time.Millisecond),
				written, float64(written)/elapsed.Seconds())
			minutes := 1 + int(elapsed/time.Minute)
			if written > minutes*160<<10 {
				t.Errorf("%d bytes of log under the attack, want at most %d KiB", written, minutes*160)
			}
			lines, left := strings.Count(text, "msg=login "), int64(0)
			for _, m := range loginsLeftOut.FindAllStringSubmatch(text, -1) {
				n, _ := strconv.ParseInt(m[1], 10, 64)
				left += n
			}
			if lines > 20*minutes || int64(lines)+left != logins.Load() || !strings.Contains(text, "msg=login ident=reader") {
				t.Errorf("%d login lines and %d counted, want at most %d lines and %d in all; log:\n%.20000s",
					lines, left, 20*minutes, logins.Load(), text)
			}
		})
	}
}

// startCounted runs the binary with env and args, its stderr counted, until
// the test ends, and waits until it listens on the endpoints and exporter
// among args (tcp:interface=127.0.0.1:port=N, --exporter=127.0.0.1:N).
func startCounted(t *testing.T, env []string, args ...string) (*exec.Cmd, *byteCount) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = t.TempDir()
	log := &byteCount{}
	cmd.Stderr = log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for _, a := range args {
		if m := listenArg.FindStringSubmatch(a); m != nil {
			waitListening(t, "127.0.0.1:"+m[1])
		}
	}
	return cmd, log
}

var listenArg = regexp.MustCompile(`^(?:tcp:interface=127\.0\.0\.1:port=|--exporter=127\.0\.0\.1:)(\d+)$`)

// freePort is a TCP port free on 127.0.0.1 a moment ago.
func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

func waitListening(t *testing.T, addr string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
	}
	t.Fatalf("the broker never listened on %s", addr)
}
