package main

import (
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

var loginsLeftOut = regexp.MustCompile(`msg="login lines left out: over 20 a minute from this source" source=127.0.0.1/32 suppressed=(\d+)`)

// The attacks of issue 21 against the real binary: 8 clients of one
// address in a loop of login, refused SUBSCRIBE (of a 200 KiB channel, or
// a short one) and disconnect. The log keeps 20 login and 20 disconnect
// lines a minute from the address and says how many it left out; the
// bytes it writes are bounded whatever the clients send. Run with -v for
// the bytes per second (docs/reliability.md).
func TestLogBytesUnderAttack(t *testing.T) {
	for _, c := range []struct {
		name    string
		channel int
	}{{"refused subscribes of 200 KiB", 200 << 10}, {"login and disconnect", 2}} {
		t.Run(c.name, func(t *testing.T) {
			port := freePort(t)
			cmd := exec.Command(binary, "--auth=env", "-e", "tcp:interface=127.0.0.1:port="+port)
			cmd.Env = append(os.Environ(), "HPFEEDS_READER_SECRET=s", "HPFEEDS_READER_SUBCHANS=ok")
			log := &byteCount{}
			cmd.Stderr = log
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Wait()
			defer cmd.Process.Kill()
			addr := "127.0.0.1:" + port
			waitListening(t, addr)
			before, _ := log.read()
			channel := strings.Repeat("\x1b[2J", c.channel/4) + "no"
			var logins atomic.Int64
			start := time.Now()
			var wg sync.WaitGroup
			for range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for time.Since(start) < 3*time.Second {
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
			if written > 160<<10 {
				t.Errorf("%d bytes of log under the attack, want at most 160 KiB", written)
			}
			m := loginsLeftOut.FindStringSubmatch(text)
			if m == nil || m[1] != strconv.FormatInt(logins.Load()-20, 10) || strings.Count(text, "msg=login ") != 20 {
				t.Errorf("want the first 20 login lines and the other %d counted; log:\n%.20000s", logins.Load()-20, text)
			}
		})
	}
}

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
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
	}
	t.Fatalf("the broker never listened on %s", addr)
}
