package main

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"github.com/hpfeeds-go/hpfeeds/internal/loadgen"
	"github.com/hpfeeds-go/hpfeeds/internal/testbin"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

var cliBinary string

func TestMain(m *testing.M) { testbin.Main(m, "hpfeeds", &cliBinary) }

var users = brokertest.NewUsers(
	auth.User{Ident: "cli", Secret: "s", PubChans: []string{"c1", "c2", "bench"}, SubChans: []string{"c1", "c2", "bench"}},
)

func args(addr string, more ...string) []string {
	host, port, _ := net.SplitHostPort(addr)
	return append([]string{"--host", host, "-p", port, "-i", "cli", "-s", "s"}, more...)
}

func hpfeeds(t *testing.T, a ...string) (string, int) {
	t.Helper()
	out, err := exec.Command(cliBinary, a...).CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

// startSubscriber runs `hpfeeds subscribe` and returns its output lines.
func startSubscriber(t *testing.T, a ...string) <-chan string {
	cmd := exec.Command(cliBinary, a...)
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	return lines
}

func next(t *testing.T, lines <-chan string) string {
	t.Helper()
	select {
	case l := <-lines:
		return l
	case <-time.After(10 * time.Second):
		t.Fatal("no output")
	}
	return ""
}

func TestSubscribeAndPublish(t *testing.T) {
	srv := brokertest.Start(t, users)
	lines := startSubscriber(t, args(srv.Addr, "subscribe", "-c", "c1", "-c", "c2")...)
	if l := next(t, lines); l != "[feedcli] connected to hpfeeds" {
		t.Fatalf("got %q", l)
	}
	// SUBSCRIBE has no reply: publish until the subscriber prints.
	var got string
	for i := 0; i < 50 && got == ""; i++ {
		out, code := hpfeeds(t, args(srv.Addr, "publish", "-c", "c1", "hello", "world")...)
		if code != 0 {
			t.Fatalf("publish: %d %s", code, out)
		}
		select {
		case got = <-lines:
		case <-time.After(100 * time.Millisecond):
		}
	}
	if got != "[feedcli] publish to c1 by cli: hello world" {
		t.Fatalf("got %q", got)
	}
	for len(lines) > 0 {
		<-lines
	}
	// A binary payload is shown as hex, not crashed on.
	bin := filepath.Join(t.TempDir(), "bin")
	os.WriteFile(bin, []byte{0, 1, 2, 0xff, 0xfe}, 0o600)
	if out, code := hpfeeds(t, args(srv.Addr, "sendfile", "-c", "c2", bin)...); code != 0 {
		t.Fatalf("sendfile: %d %s", code, out)
	}
	if l := next(t, lines); l != "[feedcli] publish to c2 by cli: 000102fffe" {
		t.Fatalf("got %q", l)
	}
}

func TestSubscribeJSON(t *testing.T) {
	srv := brokertest.Start(t, users)
	lines := startSubscriber(t, args(srv.Addr, "subscribe", "--json", "-c", "c1")...)
	next(t, lines)
	var rec map[string]string
	for i := 0; i < 50 && rec == nil; i++ {
		hpfeeds(t, args(srv.Addr, "publish", "-c", "c1", `{"a": 1}`)...)
		select {
		case l := <-lines:
			if err := json.Unmarshal([]byte(l), &rec); err != nil {
				t.Fatalf("%q: %v", l, err)
			}
		case <-time.After(100 * time.Millisecond):
		}
	}
	if rec["ident"] != "cli" || rec["channel"] != "c1" || rec["payload"] != `{"a": 1}` {
		t.Fatalf("got %v", rec)
	}
}

func TestBrokerErrorExitsNonZero(t *testing.T) {
	srv := brokertest.Start(t, users)
	out, code := hpfeeds(t, args(srv.Addr, "publish", "-c", "forbidden", "x")...)
	if code == 0 || !strings.Contains(out, "Authkey not allowed to pub here. ident=cli, chan=forbidden") {
		t.Fatalf("exit %d: %s", code, out)
	}
	host, port, _ := net.SplitHostPort(srv.Addr)
	out, code = hpfeeds(t, "--host", host, "-p", port, "-i", "cli", "-s", "wrong", "subscribe", "-c", "c1")
	if code == 0 || !strings.Contains(out, "Authentication failed for cli") {
		t.Fatalf("exit %d: %s", code, out)
	}
}

func TestBench(t *testing.T) {
	srv := brokertest.Start(t, users)
	out, code := hpfeeds(t, args(srv.Addr, "bench", "--subscribers", "3", "--count", "2000", "--json")...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	var r loadgen.Result
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if r.Published != 2000 || r.Delivered != 6000 || r.Lost != 0 || r.P99us <= 0 {
		t.Fatalf("%+v", r)
	}
}

// A broker that drops one message in fifty must be caught.
func TestBenchDetectsLoss(t *testing.T) {
	addr := droppingBroker(t, 50)
	out, code := hpfeeds(t, args(addr, "bench", "--subscribers", "2", "--count", "1000", "--drain", "500ms")...)
	if code == 0 || !strings.Contains(out, "LOST") || !strings.Contains(out, "deliveries lost") {
		t.Fatalf("exit %d: %s", code, out)
	}
}

// droppingBroker accepts anyone and relays every PUBLISH to every
// subscriber, except every nth bench message.
func droppingBroker(t *testing.T, nth int) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var mu sync.Mutex
	var subs []net.Conn
	seen := 0
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { nc.Close() })
			go func() {
				info, _ := wire.AppendInfo(nil, "dropper", [4]byte{})
				nc.Write(info)
				rd := wire.NewReader(nc, wire.UniformLimits(1<<20))
				for {
					f, err := rd.Next()
					if err != nil {
						return
					}
					mu.Lock()
					switch f.Op {
					case wire.OpSubscribe:
						subs = append(subs, nc)
					case wire.OpPublish:
						seen++
						if f.Payload[0] == 'B' && seen%nth == 0 {
							break
						}
						for _, s := range subs {
							s.Write(f.Raw)
						}
					}
					mu.Unlock()
				}
			}()
		}
	}()
	return l.Addr().String()
}

// selfSigned writes a self-signed certificate naming dnsNames (none: only
// a common name, as the old recipes made) and its key into a temporary
// directory.
func selfSigned(t *testing.T, dnsNames ...string) (cert, key string) {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "broker.example"}, DNSNames: dnsNames,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalPKCS8PrivateKey(k)
	dir := t.TempDir()
	cert, key = filepath.Join(dir, "broker.crt"), filepath.Join(dir, "broker.key")
	os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}), 0o600)
	return cert, key
}

// The TLS flags: --tls-ca with --tls-server-name for a certificate that
// names the broker otherwise than --host; --insecure-skip-verify, which
// says loudly what it gives up; and errors that say which flag helps.
func TestTLSFlags(t *testing.T) {
	cert, key := selfSigned(t, "broker.example")
	srv := brokertest.StartEndpoint(t, users, "tls:interface=127.0.0.1:port=0:cert="+cert+":key="+key)
	pub := func(more ...string) (string, int) {
		return hpfeeds(t, args(srv.Addr, append([]string{"publish", "-c", "c1"}, append(more, "x")...)...)...)
	}
	if out, code := pub("--tls-ca", cert); code == 0 || !strings.Contains(out, "--tls-server-name") {
		t.Errorf("wrong name: exit %d: %s", code, out)
	}
	if out, code := pub("--tls-ca", cert, "--tls-server-name", "broker.example"); code != 0 || strings.Contains(out, "WARNING") {
		t.Errorf("--tls-server-name: exit %d: %s", code, out)
	}
	if out, code := pub("--tlscert", cert, "--tls-server-name", "broker.example"); code != 0 {
		t.Errorf("--tlscert, the Python spelling: exit %d: %s", code, out)
	}
	if out, code := pub("--tls-server-name", "broker.example"); code == 0 || !strings.Contains(out, "--tls-ca") {
		t.Errorf("unknown CA: exit %d: %s", code, out)
	}
	// A certificate naming nothing, as the old recipes made it.
	bare, bareKey := selfSigned(t)
	old := brokertest.StartEndpoint(t, users, "tls:interface=127.0.0.1:port=0:cert="+bare+":key="+bareKey)
	out, code := hpfeeds(t, args(old.Addr, "publish", "-c", "c1", "--insecure-skip-verify", "x")...)
	if code != 0 || !strings.Contains(out, "WARNING: --insecure-skip-verify: the broker's certificate is NOT verified") {
		t.Errorf("--insecure-skip-verify: exit %d: %s", code, out)
	}
	if out, code := hpfeeds(t, args(old.Addr, "publish", "-c", "c1", "--insecure-skip-verify", "--tls-ca", bare, "x")...); code == 0 {
		t.Errorf("--insecure-skip-verify with --tls-ca accepted: %s", out)
	}
}

// Plain TCP against a TLS endpoint and TLS against a plain one: each
// error says which flag to change.
func TestTLSMismatchHints(t *testing.T) {
	cert, key := selfSigned(t, "broker.example")
	short := func(c *broker.Config) { c.AuthTimeout = time.Second }
	tlsSrv := brokertest.StartEndpoint(t, users, "tls:interface=127.0.0.1:port=0:cert="+cert+":key="+key, short)
	if out, code := hpfeeds(t, args(tlsSrv.Addr, "publish", "-c", "c1", "x")...); code == 0 || !strings.Contains(out, "connect with --tls or --tls-ca FILE") {
		t.Errorf("plain TCP to TLS: exit %d: %s", code, out)
	}
	// A TLS endpoint slower to give up than the client: the client used to
	// wait 10 s and print a bare i/o timeout.
	slow := brokertest.StartEndpoint(t, users, "tls:interface=127.0.0.1:port=0:cert="+cert+":key="+key,
		func(c *broker.Config) { c.AuthTimeout = time.Minute })
	for _, cmd := range [][]string{{"publish", "-c", "c1", "x"}, {"bench", "--count", "1"}} {
		start := time.Now()
		out, code := hpfeeds(t, args(slow.Addr, cmd...)...)
		if code == 0 || !strings.Contains(out, "i/o timeout (no INFO within 3s: if the endpoint is tls:, connect with --tls or --tls-ca FILE)") {
			t.Errorf("%s, plain TCP to a silent TLS endpoint: exit %d: %s", cmd[0], code, out)
		}
		if d := time.Since(start); d > 8*time.Second {
			t.Errorf("%s: the hint took %v", cmd[0], d)
		}
	}
	plain := brokertest.Start(t, users)
	if out, code := hpfeeds(t, args(plain.Addr, "publish", "-c", "c1", "--tls-ca", cert, "x")...); code == 0 || !strings.Contains(out, "the endpoint speaks plain TCP") {
		t.Errorf("TLS to plain TCP: exit %d: %s", code, out)
	}
}

// subscribe -o appends messages to a file, keeping status lines on
// standard output; --debug logs each step on standard error.
func TestSubscribeOutputAndDebug(t *testing.T) {
	srv := brokertest.Start(t, users)
	file := filepath.Join(t.TempDir(), "messages.log")
	os.WriteFile(file, []byte("earlier\n"), 0o600)
	cmd := exec.Command(cliBinary, args(srv.Addr, "subscribe", "-c", "c1", "-o", file, "--debug")...)
	var stdout, stderr lockedBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	want := "earlier\n[feedcli] publish to c1 by cli: hello\n"
	var got []byte
	for i := 0; i < 100 && !strings.HasPrefix(string(got), want); i++ {
		hpfeeds(t, args(srv.Addr, "publish", "-c", "c1", "hello")...)
		time.Sleep(50 * time.Millisecond)
		got, _ = os.ReadFile(file)
	}
	if !strings.HasPrefix(string(got), want) {
		t.Fatalf("file holds %q", got)
	}
	cmd.Process.Signal(os.Interrupt)
	cmd.Wait()
	if o := stdout.String(); o != "[feedcli] connected to hpfeeds\n[feedcli] closing connection.\n" {
		t.Errorf("stdout: %q", o)
	}
	for _, w := range []string{"level=DEBUG msg=connecting", "msg=subscribed", "msg=message channel=c1 ident=cli bytes=5"} {
		if !strings.Contains(stderr.String(), w) {
			t.Errorf("stderr lacks %q:\n%s", w, stderr.String())
		}
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// --version says the version, the commit and the Go version, as the
// broker's does (internal/version; make release stamps it from git).
func TestVersion(t *testing.T) {
	out, err := exec.Command(cliBinary, "--version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "hpfeeds ") || !strings.Contains(string(out), " (commit ") ||
		!strings.HasSuffix(string(out), ", "+runtime.Version()+")\n") {
		t.Errorf("--version: %v %q", err, out)
	}
}

// benchJSON runs `hpfeeds bench --json` against addr.
func benchJSON(t *testing.T, addr string, more ...string) (loadgen.Result, string, int) {
	t.Helper()
	out, code := hpfeeds(t, args(addr, append([]string{"bench", "--json"}, more...)...)...)
	var r loadgen.Result
	json.Unmarshal([]byte(out), &r)
	return r, out, code
}

// Two runs at once on one channel each count their own messages only:
// they used to count each other's and report a negative loss.
func TestBenchRunsShareAChannel(t *testing.T) {
	srv := brokertest.Start(t, users)
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, out, code := benchJSON(t, srv.Addr, "--subscribers", "2", "--rate", "400", "--duration", "2s")
			if code != 0 || r.Published == 0 || r.Delivered != r.Expected || r.Expected != 2*r.Published {
				t.Errorf("run %d: exit %d: %s", i, code, out)
			}
		}()
	}
	wg.Wait()
}

// A paced, timed run stops at its deadline: at 3 messages a second the
// deadline used to be checked every 64 messages, 21 s in.
func TestBenchStopsAtItsDeadline(t *testing.T) {
	srv := brokertest.Start(t, users)
	r, out, code := benchJSON(t, srv.Addr, "--subscribers", "1", "--rate", "3", "--duration", "2s")
	if code != 0 || r.Published < 1 || r.Published > 7 || r.Seconds > 5 {
		t.Fatalf("want at most 7 messages (3/s for 2 s) and an end near 2 s: exit %d: %s", code, out)
	}
}

// publishStdin runs `hpfeeds publish --stdin` with input on standard input.
func publishStdin(t *testing.T, addr, input string, more ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(cliBinary, args(addr, append([]string{"publish", "--stdin"}, more...)...)...)
	cmd.Stdin = strings.NewReader(input)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

// publish --stdin publishes each non-empty line, in order, on one
// connection; a refusal ends it with the broker's error and exit 1.
func TestPublishStdin(t *testing.T) {
	var log brokertest.Log
	srv := brokertest.Start(t, users, func(c *broker.Config) { c.Logger = log.Logger() })
	lines := startSubscriber(t, args(srv.Addr, "subscribe", "-c", "c1")...)
	next(t, lines)
	heard := false
	for i := 0; i < 50 && !heard; i++ { // SUBSCRIBE has no reply: publish until heard
		hpfeeds(t, args(srv.Addr, "publish", "-c", "c1", "ready")...)
		select {
		case <-lines:
			heard = true
		case <-time.After(100 * time.Millisecond):
		}
	}
	for len(lines) > 0 {
		<-lines
	}
	logins := log.Count("msg=login")
	out, code := publishStdin(t, srv.Addr, "one\n\ntwo words\r\nthree", "-c", "c1")
	if code != 0 || out != "[feedcli] connected to hpfeeds\n[feedcli] closing connection.\n" {
		t.Fatalf("exit %d: %q", code, out)
	}
	for _, want := range []string{"one", "two words", "three"} {
		if l := next(t, lines); l != "[feedcli] publish to c1 by cli: "+want {
			t.Fatalf("got %q, want %q", l, want)
		}
	}
	if n := log.Count("msg=login") - logins; n != 1 {
		t.Errorf("%d logins for three lines, want one connection", n)
	}
	out, code = publishStdin(t, srv.Addr, strings.Repeat("x\n", 20), "-c", "c1", "-c", "forbidden")
	if code != 1 || !strings.Contains(out, "error message from broker: Authkey not allowed to pub here. ident=cli, chan=forbidden") {
		t.Errorf("refused: exit %d: %s", code, out)
	}
	if out, code := hpfeeds(t, args(srv.Addr, "publish", "--stdin", "-c", "c1", "words")...); code != 1 || !strings.Contains(out, "give no words") {
		t.Errorf("--stdin with words: exit %d: %s", code, out)
	}
}

// A broker that keeps a half-closed connection open (the Python one may)
// gets the 1 s every publish used to wait, then the command succeeds.
func TestPublishToABrokerKeepingHalfClosedOpen(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { nc.Close() })
			info, _ := wire.AppendInfo(nil, "keeper", [4]byte{})
			nc.Write(info)
			go io.Copy(io.Discard, nc) // reads to EOF, never closes
		}
	}()
	if out, code := publishStdin(t, l.Addr().String(), "a\nb\n", "-c", "c1"); code != 0 || !strings.Contains(out, "closing connection.") {
		t.Errorf("exit %d: %s", code, out)
	}
}
