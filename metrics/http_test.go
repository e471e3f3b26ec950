package metrics_test

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/hpfeeds-go/hpfeeds/metrics"
)

// serve runs metrics.Server for the test's broker on a loopback port.
func serve(t *testing.T, opts metrics.ServerOptions) string {
	t.Helper()
	e := startExported(t, testUsers())
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, errc := metrics.Server(l, metrics.Handler(metrics.NewRegistry(e.Broker, nil)), opts)
	t.Cleanup(func() {
		srv.Close()
		<-errc
	})
	return l.Addr().String()
}

// keepAlive opens a connection, asks GET /healthz with keep-alive and
// reads the whole answer, leaving the connection idle.
func keepAlive(t *testing.T, addr string) net.Conn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(nc, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != 200 || resp.Close {
		t.Fatalf("GET /healthz: %s, close=%v", resp.Status, resp.Close)
	}
	return nc
}

// Idle keep-alive connections are closed by the server within its idle
// timeout. Before, 1,000 of them were all still open after 25 s.
func TestExporterClosesIdleConnections(t *testing.T) {
	const idle = time.Second
	addr := serve(t, metrics.ServerOptions{IdleTimeout: idle, MaxConns: 200})
	var conns []net.Conn
	for range 100 {
		conns = append(conns, keepAlive(t, addr))
	}
	start := time.Now()
	var wg sync.WaitGroup
	for _, nc := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nc.SetReadDeadline(start.Add(idle + 5*time.Second)) // generous: a loaded machine
			if n, err := nc.Read(make([]byte, 1)); err != io.EOF {
				t.Errorf("an idle connection read %d bytes, %v; want it closed by the server", n, err)
			}
		}()
	}
	wg.Wait()
}

// Past MaxConns a new connection is served at once, in the slot of an
// idle connection, which is closed: one, not more. Before, it waited to be
// accepted until a holder let go.
func TestExporterConnectionCap(t *testing.T) {
	addr := serve(t, metrics.ServerOptions{MaxConns: 4})
	var held []net.Conn
	for range 4 {
		held = append(held, keepAlive(t, addr))
	}
	if code := probe(t, addr, "127.0.0.1", ""); code != 200 {
		t.Fatalf("a fifth connection got %d", code)
	}
	var closed atomic.Int32
	var wg sync.WaitGroup
	for _, nc := range held {
		wg.Go(func() {
			nc.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, err := nc.Read(make([]byte, 1)); err == io.EOF {
				closed.Add(1)
			} else if !os.IsTimeout(err) {
				t.Errorf("reading a held connection: %v", err)
			}
		})
	}
	wg.Wait()
	if closed.Load() != 1 {
		t.Errorf("%d idle connections were closed for the fifth, want 1", closed.Load())
	}
}

// --web-config-file in the exporter-toolkit format: TLS, and basic
// authentication with a bcrypt hash.
func TestExporterWebConfig(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "exporter.crt"), filepath.Join(dir, "exporter.key")
	out, err := exec.Command("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
		"-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
		"-keyout", key, "-out", cert).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl: %v\n%s", err, out)
	}
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "web.yml")
	write(t, cfg, fmt.Sprintf("tls_server_config:\n  cert_file: %s\n  key_file: %s\nbasic_auth_users:\n  prometheus: %s\n", cert, key, hash))
	if err := metrics.CheckWebConfig(cfg); err != nil {
		t.Fatal(err)
	}
	addr := serve(t, metrics.ServerOptions{WebConfigFile: cfg})

	pem, _ := os.ReadFile(cert)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	for _, c := range []struct {
		user, pass string
		want       int
	}{{"", "", 401}, {"prometheus", "wrong", 401}, {"prometheus", "s3cret", 200}} {
		req, _ := http.NewRequest("GET", "https://"+addr+"/metrics", nil)
		if c.user != "" {
			req.SetBasicAuth(c.user, c.pass)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("%s:%s got %s, want %d", c.user, c.pass, resp.Status, c.want)
		}
		if c.want == 200 && !strings.Contains(string(body), "hpfeeds_broker_client_connections") {
			t.Errorf("authenticated scrape has no broker series")
		}
	}
	if resp, err := http.Get("http://" + addr + "/metrics"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Error("plain HTTP was served on the TLS exporter")
		}
	}
	for _, bad := range []string{"tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: /nonexistent.key\n", "basic_auth_users: [\n"} {
		write(t, cfg, bad)
		if err := metrics.CheckWebConfig(cfg); err == nil {
			t.Errorf("web configuration %q accepted", bad)
		}
	}
}

func write(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}
