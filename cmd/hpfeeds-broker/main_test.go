package main

import (
	"bufio"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
	"github.com/hpfeeds-go/hpfeeds/internal/testbin"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

var binary string

func TestMain(m *testing.M) { testbin.Main(m, "hpfeeds-broker", &binary) }

// run runs the real binary in a directory of its own and returns its exit
// code and output.
func run(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	return runIn(t, t.TempDir(), "", env, args...)
}

func TestCheckConfig(t *testing.T) {
	code, out := run(t, nil, "--check-config", "--auth=env", "-e", "tcp:interface=127.0.0.1:port=0", "-e", "tcp:interface=[::1]:port=0")
	if code != 0 || !strings.Contains(out, "configuration OK: 2 endpoint(s)") {
		t.Fatalf("exit %d: %s", code, out)
	}
}

// Start-up mistakes exit non-zero with one clear line.
func TestStartupErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-e", "udp:port=1", "--auth=env"}, `unknown class "udp"`},
		{[]string{"-e", "tcp:interface=127.0.0.1", "--auth=env"}, "no port"},
		{[]string{"-e", "tcp:port=1:colour=blue", "--auth=env"}, `unknown key "colour"`},
		{[]string{"--tlscert", "a.crt", "--bind", "127.0.0.1:0", "--auth=env"}, "--tlscert and --tlskey go together"},
		{[]string{"--bind", "nonsense", "--auth=env"}, "--bind"},
		{[]string{"--auth=nosuchstore", "-e", "tcp:port=0"}, "not a credential store"},
		{[]string{"--auth=/nonexistent/users.json", "-e", "tcp:port=0"}, "users.json"},
		{[]string{"--name", strings.Repeat("n", 256), "--auth=env", "-e", "tcp:interface=127.0.0.1:port=0"}, "255"},
		{[]string{"--exporter", "9431", "--auth=env"}, "--exporter"},
		{[]string{"-e", "tls:interface=127.0.0.1:port=0:cert=missing.crt:key=missing.key", "--auth=env"}, "missing.crt"},
		{[]string{"--no-such-flag"}, "unknown flag"},
		{[]string{"--memory-limit=lots", "--auth=env"}, "not a size"},
		{[]string{"--memory-limit=1MiB", "--auth=env", "-e", "tcp:interface=127.0.0.1:port=0"}, "memory limit 1048576 bytes"},
		{[]string{"extra-argument", "--auth=env"}, "unknown command"},
		// Two stores down: pgx names each address it tried on a line of
		// its own, and each store has its own error.
		{[]string{"-e", "tcp:interface=127.0.0.1:port=0", "--lookup-timeout=2s",
			"--auth=database+postgresql://postgres:pw@127.0.0.1:1/x", "--auth=database+mysql://root@127.0.0.1:1/x"},
			"credential store unreachable: database+postgresql://postgres:xxxxx@127.0.0.1:1/x"},
	} {
		code, out := run(t, nil, append([]string{"--check-config"}, c.args...)...)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if code == 0 || !strings.Contains(out, c.want) || len(lines) != 1 {
			t.Errorf("%v: exit %d, output:\n%s\nwant one line mentioning %q", c.args, code, out, c.want)
		}
	}
}

// The endpoint's address as logged, in --log-format=text or json.
var listening = regexp.MustCompile(`(?:msg=listening .* addr=|"msg":"listening".*"addr":")([^"\s]+)`)

// SIGTERM under load stops accepting, closes clients and exits 0: with
// publishers flooding, a subscriber that never reads, and clients still
// connecting.
func TestGracefulShutdown(t *testing.T) {
	cmd := exec.Command(binary, "--auth=env", "-e", "tcp:interface=127.0.0.1:port=0")
	cmd.Env = append(os.Environ(), "HPFEEDS_TEST_SECRET=s", "HPFEEDS_TEST_SUBCHANS=c", "HPFEEDS_TEST_PUBCHANS=c")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(stderr)
	var addr string
	for sc.Scan() {
		if m := listening.FindStringSubmatch(sc.Text()); m != nil {
			addr = m[1]
			break
		}
	}
	if addr == "" {
		t.Fatal("broker never logged its address")
	}
	go io.Copy(io.Discard, stderr)

	sub := brokertest.Login(t, addr, "test", "s")
	sub.Send(brokertest.Subscribe(t, "test", "c"))
	nc := sub.Conn
	nc.SetReadDeadline(time.Time{}) // it reads until the broker closes it

	stop := make(chan struct{})
	defer close(stop)
	var published atomic.Int64
	client := func(work func(net.Conn, []byte)) {
		go func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, err := net.Dial("tcp", addr)
				if err != nil {
					return // the broker has exited
				}
				rd := wire.NewReader(c, wire.UniformLimits(1024))
				if info, err := rd.Next(); err == nil {
					work(c, info.Payload)
				}
				c.Close()
			}
		}()
	}
	for i := 0; i < 4; i++ { // publishers
		client(func(c net.Conn, nonce []byte) {
			a, _ := wire.AppendAuth(nil, nonce, "test", "s")
			c.Write(a)
			frame, _ := wire.AppendPublish(nil, []byte("test"), []byte("c"), make([]byte, 4096))
			for {
				if _, err := c.Write(frame); err != nil {
					return
				}
				published.Add(1)
			}
		})
	}
	client(func(c net.Conn, nonce []byte) { // a subscriber that never reads
		a, _ := wire.AppendAuth(nil, nonce, "test", "s")
		a, _ = wire.AppendSubscribe(a, []byte("test"), []byte("c"))
		c.Write(a)
		<-stop
	})
	for i := 0; i < 4; i++ { // connection churn
		client(func(net.Conn, []byte) {})
	}
	subDone := make(chan struct{})
	go func() { io.Copy(io.Discard, nc); close(subDone) }() // a subscriber that keeps up
	for published.Load() < 1000 {
		time.Sleep(10 * time.Millisecond)
	}

	start := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("broker still running 10 s after SIGTERM")
	}
	t.Logf("exited %v after SIGTERM", time.Since(start))
	select {
	case <-subDone:
	case <-time.After(5 * time.Second):
		t.Fatal("client connection not closed")
	}
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Fatal("still accepting after exit")
	}
}
