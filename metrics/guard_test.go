package metrics_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/hpfeeds-go/hpfeeds/metrics"
)

// probe asks GET /healthz on a fresh connection from the loopback address
// src, as an orchestrator's health check does, with its usual 2 s
// timeout; basic authentication if pass is set. It returns the status, or
// 0 if there was no answer.
func probe(t *testing.T, addr, src, pass string) int {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
	req, _ := http.NewRequest("GET", "http://"+addr+"/healthz", nil)
	if pass != "" {
		req.SetBasicAuth("prometheus", pass)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Logf("probe from %s: %v", src, err)
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// basicAuth writes a web configuration with the user prometheus and the
// password s3cret hashed at cost.
func basicAuth(t *testing.T, cost int) string {
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), cost)
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "web.yml")
	write(t, cfg, fmt.Sprintf("basic_auth_users:\n  prometheus: %s\n", hash))
	return cfg
}

// holdAsked opens a keep-alive connection, asks GET /healthz and leaves it
// idle after the answer, whatever its status.
func holdAsked(t *testing.T, addr string) int {
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
	return resp.StatusCode
}

// 64 keep-alive connections idling between requests, and more that
// connect and never ask, hold every slot of the exporter; health probes
// from the same address and from another still all get through. Before,
// 0 of 60 probes did: connections waited to be accepted.
func TestExporterHoldersCannotStarveProbes(t *testing.T) {
	addr := serve(t, metrics.ServerOptions{})
	for range metrics.DefaultMaxConns {
		holdAsked(t, addr)
	}
	for range 16 {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
	}
	for i := range 12 {
		src := []string{"127.0.0.2", "127.0.0.1"}[i%2]
		if code := probe(t, addr, src, ""); code != 200 {
			t.Errorf("probe %d from %s: %d, want 200", i, src, code)
		}
	}
}

// With basic authentication, 70 clients that got 401 and keep their
// connections open hold no slot an authenticated probe needs. Before, 0
// of 30 authenticated probes got through.
func TestExporterUnauthorizedHoldersCannotStarveProbes(t *testing.T) {
	addr := serve(t, metrics.ServerOptions{WebConfigFile: basicAuth(t, bcrypt.MinCost)})
	for range 70 {
		if code := holdAsked(t, addr); code != 401 {
			t.Fatalf("GET /healthz without credentials: %d, want 401", code)
		}
	}
	for i := range 10 {
		if code := probe(t, addr, "127.0.0.2", "s3cret"); code != 200 {
			t.Errorf("authenticated probe %d: %d, want 200", i, code)
		}
	}
}

// slowCost is the bcrypt cost at which one comparison takes 100 ms or more
// here (cost 10 without the race detector), so 48 of them take far longer
// than a probe waits, with or without it.
func slowCost(t *testing.T) int {
	for cost := bcrypt.MinCost; ; cost++ {
		hash, _ := bcrypt.GenerateFromPassword([]byte("x"), cost)
		start := time.Now()
		bcrypt.CompareHashAndPassword(hash, []byte("y"))
		if time.Since(start) >= 100*time.Millisecond || cost == bcrypt.DefaultCost {
			t.Logf("bcrypt cost %d: %v a comparison", cost, time.Since(start))
			return cost
		}
	}
}

// 48 clients from one address trying wrong passwords as fast as they can
// get 429 past one check at a time and a few a second, and authenticated
// probes from another address every 200 ms are all answered within their
// 2 s. Before, the wrong passwords queued for one bcrypt comparison at a
// time ahead of the probes, and kept a core busy.
func TestExporterWrongPasswordFlood(t *testing.T) {
	addr := serve(t, metrics.ServerOptions{WebConfigFile: basicAuth(t, slowCost(t))})
	var stop atomic.Bool
	var checked, refused atomic.Int64 // 401s (a bcrypt comparison each) and 429s
	var wg sync.WaitGroup
	start := time.Now()
	for f := range 48 {
		wg.Go(func() {
			c := &http.Client{Timeout: 10 * time.Second}
			for n := 0; !stop.Load(); n++ {
				req, _ := http.NewRequest("GET", "http://"+addr+"/metrics", nil)
				req.SetBasicAuth("prometheus", fmt.Sprintf("guess-%d-%d", f, n))
				resp, err := c.Do(req)
				if err != nil {
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				switch resp.StatusCode {
				case 401:
					checked.Add(1)
				case 429:
					refused.Add(1)
				}
			}
		})
	}
	for i := range 15 {
		time.Sleep(200 * time.Millisecond)
		if code := probe(t, addr, "127.0.0.2", "s3cret"); code != 200 {
			t.Errorf("probe %d during the flood: %d, want 200", i, code)
		}
	}
	stop.Store(true)
	wg.Wait()
	elapsed := time.Since(start)
	// The source's burst, then one a second.
	if most := int64(3 + elapsed.Seconds() + 1); checked.Load() > most || refused.Load() == 0 {
		t.Errorf("in %v the flood got %d passwords checked (want at most %d) and %d refused",
			elapsed.Round(time.Millisecond), checked.Load(), most, refused.Load())
	}
}
