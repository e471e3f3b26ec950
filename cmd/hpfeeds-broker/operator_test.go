package main

import (
	"bytes"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
	filewatch "github.com/hpfeeds-go/hpfeeds/internal/watch"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

// rawLogin connects to addr, logs in as ident with secret "s" and
// subscribes to channels, returning once the broker has read them.
func rawLogin(t *testing.T, addr, ident string, channels ...string) (net.Conn, *wire.Reader) {
	t.Helper()
	c := brokertest.Login(t, addr, ident, "s")
	c.SubscribeOwn(ident, channels...)
	return c.Conn, c.R
}

// payloadFor returns a payload making a PUBLISH body of n bytes.
func payloadFor(ident, channel string, n int) []byte {
	return bytes.Repeat([]byte("x"), n-2-len(ident)-len(channel))
}

// By default a PUBLISH body may be 1 MiB, the reference's limit: a larger
// one drops its publisher and reaches nobody (a Python subscriber would
// drop its own connection on it); --max-publish-size raises the limit.
func TestMaxPublishSizeDefault(t *testing.T) {
	clusterUser("big")
	clusterUser("bigsub")
	for _, c := range []struct {
		args      []string
		delivered bool
	}{{nil, false}, {[]string{"--max-publish-size=2097152"}, true}} {
		b := startClusterBroker(t, c.args...)
		sub, rd := rawLogin(t, b.addr, "bigsub", "events")
		pub, _ := rawLogin(t, b.addr, "big")
		for _, n := range []int{1 << 20, 1<<20 + 1} {
			frame, _ := wire.AppendPublish(nil, []byte("big"), []byte("events"), payloadFor("big", "events", n))
			pub.Write(frame)
		}
		// The marker follows on a connection whose frames come after
		// those above: the publisher's own, or, once the broker has
		// closed the publisher, the subscriber's.
		marker, _ := wire.AppendPublish(nil, []byte("big"), []byte("events"), []byte("marker"))
		if c.delivered {
			pub.Write(marker)
		} else {
			pub.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadAll(pub); err != nil && !strings.Contains(err.Error(), "reset") {
				t.Fatalf("publisher of an oversized body not closed: %v", err)
			}
			marker, _ = wire.AppendPublish(nil, []byte("bigsub"), []byte("events"), []byte("marker"))
			sub.Write(marker)
		}
		var sizes []int
		sub.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			f, err := rd.Next()
			if err != nil {
				t.Fatal(err)
			}
			if string(f.Payload) == "marker" {
				break
			}
			sizes = append(sizes, len(f.Payload)+2+len(f.Ident)+len(f.Channel))
		}
		want := []int{1 << 20}
		if c.delivered {
			want = append(want, 1<<20+1)
		}
		if !slices.Equal(sizes, want) {
			t.Errorf("%v: delivered bodies of %v bytes, want %v", c.args, sizes, want)
		}
	}
}

// A plaintext client on a TLS endpoint is logged at INFO, once per
// address within 10 s: one that waits for INFO in silence (as hpfeeds
// clients do) and one that sends a frame.
func TestPlaintextClientOnTLSEndpoint(t *testing.T) {
	dir := t.TempDir()
	writeCert(t, dir)
	p := startBroker(t, false, "--auth=env", "--auth-timeout=1s",
		"-e", "tls:interface=127.0.0.1:port=0:cert="+filepath.Join(dir, "broker.crt")+":key="+filepath.Join(dir, "broker.key"))
	for _, send := range []string{"", "\x00\x00\x00\x05\x02"} {
		nc, err := net.Dial("tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		nc.Write([]byte(send))
		nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadAll(nc); err != nil {
			t.Fatalf("not closed: %v", err)
		}
		nc.Close()
	}
	log := p.stopAndLog()
	lines := regexp.MustCompile(`(?m)^.*plaintext client on a TLS endpoint.*$`).FindAllString(log, -1)
	if len(lines) != 1 || !strings.Contains(lines[0], "level=INFO") || !strings.Contains(lines[0], "peer=127.0.0.1:") {
		t.Fatalf("want one INFO line about the plaintext client, got %q in:\n%s", lines, log)
	}
}

// While NATS is down, the log says what a failed forward means for
// delivery, not nats.go's "outbound buffer limit exceeded".
func TestClusterForwardFailureWording(t *testing.T) {
	addr, nats := startNATS(t)
	clusterUser("fwd")
	p := startBroker(t, false, "--auth=env", "-e", "tcp:interface=127.0.0.1:port=0", "--cluster=nats://"+addr)
	pub, _ := rawLogin(t, p.addr, "fwd")
	nats.Process.Kill()
	nats.Wait()
	frame, _ := wire.AppendPublish(nil, []byte("fwd"), []byte("events"), []byte("x"))
	for range 20 {
		pub.Write(frame)
		time.Sleep(50 * time.Millisecond)
	}
	log := p.stopAndLog()
	want := `msg="cluster: not forwarding to NATS: messages published here reach only this broker's subscribers, and other brokers' subscribers miss them (they are not kept for later), until forwarding resumes" reason="the NATS connection is down and being re-made"`
	if !strings.Contains(log, want) || strings.Contains(log, "outbound buffer limit") {
		t.Fatalf("log lacks %s:\n%s", want, log)
	}
}

// Bucket bounds are spelled as docs/metrics.md says client_golang writes
// them: integers up to 524288, exponent form from 1 MiB on.
func TestBucketSpelling(t *testing.T) {
	clusterUser("buckets")
	p := startBroker(t, true, "--auth=env", "-e", "tcp:interface=127.0.0.1:port=0", "--exporter=127.0.0.1:0")
	rawLogin(t, p.addr, "buckets")
	_, body := get(t, "http://"+p.exporter+"/metrics")
	for _, le := range []string{"1024", "524288", "1.048576e+06", "4.194304e+06", "+Inf"} {
		if !strings.Contains(body, `hpfeeds_broker_receive_publish_size_bucket{chan="buckets",ident="buckets",le="`+le+`"}`) {
			t.Errorf("no bucket le=%q in:\n%s", le, body)
		}
	}
	doc, _ := os.ReadFile("../../docs/metrics.md")
	if !strings.Contains(string(doc), "`le=\"1.048576e+06\"`") {
		t.Error("docs/metrics.md does not give the spelling of large bounds")
	}
}

// SIGHUP (logrotate sends it) re-reads the user file and the TLS
// certificates and logs one line each time; a broken file is kept out
// with a warning; the broker never exits on it.
func TestSIGHUP(t *testing.T) {
	dir := t.TempDir()
	writeCert(t, dir)
	users := filepath.Join(dir, "users.json")
	os.WriteFile(users, []byte(`{"hup": {"secret": "s", "pubchans": ["events"]}}`), 0o600)
	p := startBroker(t, false, "--auth="+users,
		"-e", "tls:interface=127.0.0.1:port=0:cert="+filepath.Join(dir, "broker.crt")+":key="+filepath.Join(dir, "broker.key"))
	for i := 1; i <= 2; i++ {
		p.cmd.Process.Signal(syscall.SIGHUP)
		waitLog(t, p, `msg="SIGHUP`, i)
	}
	os.WriteFile(users, []byte(`{broken`), 0o600)
	waitLog(t, p, "user file not loaded", 1) // the watch's own line
	p.cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, p, `msg="SIGHUP`, 3)
	if err := p.cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("broker gone after SIGHUP: %v", err)
	}
	log := p.stopAndLog()
	if !strings.Contains(log, "msg=\"shutting down\"") {
		t.Fatalf("broker did not run until SIGTERM:\n%s", log)
	}
	lines := regexp.MustCompile(`(?m)^.*msg="SIGHUP.*$`).FindAllString(log, -1)
	ok := `level=INFO msg="SIGHUP: re-read user files and TLS certificates" reloaded="json:` + users + `, ` + filepath.Join(dir, "broker.crt") + `"`
	if len(lines) != 3 || !strings.Contains(lines[0], ok) || !strings.Contains(lines[1], ok) ||
		!strings.Contains(lines[2], "level=WARN") || !strings.Contains(lines[2], "user file is broken") {
		t.Fatalf("want two lines with %s and a warning, got:\n%s", ok, strings.Join(lines, "\n"))
	}
}

// waitLog waits until the running broker's log holds n lines containing s.
func waitLog(t *testing.T, p *brokerProcess, s string, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if strings.Count(p.logSoFar(), s) >= n {
			return
		}
	}
	t.Fatalf("log never had %d lines with %q:\n%s", n, s, p.logSoFar())
}

// A log file written beside a broken user file does not make the broker
// re-read (and complain about) the user file at every write.
func TestLogBesideBrokenUserFile(t *testing.T) {
	dir := t.TempDir()
	users := filepath.Join(dir, "users.json")
	os.WriteFile(users, []byte(`{"a": {"secret": "s"}}`), 0o600)
	p := startBroker(t, false, "--auth="+users, "-e", "tcp:interface=127.0.0.1:port=0")
	os.WriteFile(users, []byte(`{broken`), 0o600)
	waitLog(t, p, "user file is broken", 1)
	f, err := os.Create(filepath.Join(dir, "broker.log"))
	if err != nil {
		t.Fatal(err)
	}
	for range 50 {
		f.WriteString("a log line\n")
		time.Sleep(10 * time.Millisecond)
	}
	f.Close()
	time.Sleep(5 * filewatch.Debounce)
	if n := strings.Count(p.stopAndLog(), "user file is broken"); n != 1 {
		t.Fatalf("%d lines about the broken file, want 1", n)
	}
}

// --check-config binds nothing, so it passes beside the running broker it
// is about to replace; it checks interfaces, devices and the certificate
// pair instead; and it prints exactly its verdict and what it parsed,
// also with a JSON store and a TLS endpoint whose loads used to log lines
// of their own.
func TestCheckConfigBesideRunningBroker(t *testing.T) {
	dir := t.TempDir()
	writeCert(t, dir)
	crt, key := filepath.Join(dir, "broker.crt"), filepath.Join(dir, "broker.key")
	users := filepath.Join(dir, "users.json")
	os.WriteFile(users, []byte(`{"a": {"secret": "s"}}`), 0o600)
	tlsEP := func(port string) string {
		return "tls:interface=127.0.0.1:port=" + port + ":cert=" + crt + ":key=" + key
	}
	p := startBroker(t, true, "--auth="+users, "-e", tlsEP("0"), "--exporter=127.0.0.1:0")
	_, port, _ := net.SplitHostPort(p.addr)
	code, out := run(t, nil, "--check-config", "--auth="+users, "-e", tlsEP(port), "--exporter="+p.exporter)
	if code != 0 || out != "configuration OK: 1 endpoint(s), credential stores: json:"+users+"\n"+
		"endpoint: tls:127.0.0.1:"+port+"\ncredential store: json:"+users+"\nexporter: "+p.exporter+" (no --web-config-file: plain HTTP, no password)\n" {
		t.Fatalf("exit %d, output %q", code, out)
	}
	os.WriteFile(filepath.Join(dir, "other.key"), []byte("not a key"), 0o600)
	for _, c := range []struct{ endpoint, want string }{
		{"tcp:interface=192.0.2.1:port=1", "interface 192.0.2.1 is not an address of this host"},
		{"tcp:port=1:device=nosuchnic0", "device nosuchnic0"},
		{"tls:port=1:cert=" + crt + ":key=" + filepath.Join(dir, "other.key"), "other.key"},
		{"tls:port=1:cert=" + crt + ":key=" + filepath.Join(dir, "missing.key"), "missing.key"},
	} {
		code, out := run(t, nil, "--check-config", "--auth=env", "-e", c.endpoint)
		if code == 0 || strings.Count(out, "\n") != 1 || !strings.Contains(out, c.want) {
			t.Errorf("%s: exit %d, want one line mentioning %q:\n%s", c.endpoint, code, c.want, out)
		}
	}
}
