package main

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var servingMetrics = regexp.MustCompile(`(?:msg="serving metrics" addr=|"msg":"serving metrics","addr":")([^"\s]+)`)

// brokerProcess is the binary running until the test ends.
type brokerProcess struct {
	cmd            *exec.Cmd
	addr, exporter string // the endpoint and exporter addresses it logged
	log            bytes.Buffer
	logMu          sync.Mutex // lets a test read log while the broker runs
	logDone        chan struct{}
	stopOnce       sync.Once
}

// logSoFar returns what the running broker has logged so far.
func (p *brokerProcess) logSoFar() string {
	p.logMu.Lock()
	defer p.logMu.Unlock()
	return p.log.String()
}

// startBroker runs the binary until the test ends, waiting until it has
// logged its endpoint address and, if wantExporter, its exporter address.
func startBroker(t *testing.T, wantExporter bool, args ...string) *brokerProcess {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(append(os.Environ(), clusterUsers...), "HPFEEDS_TEST_SECRET=s", "HPFEEDS_TEST_SUBCHANS=c")
	cmd.Dir = t.TempDir()
	return startProcess(t, cmd, wantExporter)
}

// startProcess starts cmd, a broker, as startBroker does.
func startProcess(t *testing.T, cmd *exec.Cmd, wantExporter bool) *brokerProcess {
	t.Helper()
	p := &brokerProcess{cmd: cmd, logDone: make(chan struct{})}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.stop)
	// The whole log is kept; only this goroutine writes it (under logMu).
	// The first lines also go to the loop below, which reads them as they
	// come: the addresses are logged long before the buffer could fill.
	lines := make(chan string, 1024)
	go func() {
		defer close(p.logDone)
		defer close(lines)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.logMu.Lock()
			p.log.WriteString(sc.Text() + "\n")
			p.logMu.Unlock()
			select {
			case lines <- sc.Text():
			default:
			}
		}
	}()
	timeout := time.After(30 * time.Second)
	for p.addr == "" || wantExporter && p.exporter == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("broker exited before logging its addresses (endpoint %q, exporter %q)", p.addr, p.exporter)
			}
			if m := listening.FindStringSubmatch(l); m != nil {
				p.addr = m[1]
			}
			if m := servingMetrics.FindStringSubmatch(l); m != nil {
				p.exporter = m[1]
			}
		case <-timeout:
			t.Fatalf("broker never logged its addresses (endpoint %q, exporter %q)", p.addr, p.exporter)
		}
	}
	return p
}

// stop sends SIGTERM and waits for the process and the end of its log.
func (p *brokerProcess) stop() {
	p.stopOnce.Do(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		<-p.logDone
		p.cmd.Wait()
	})
}

// stopAndLog stops the broker and returns everything it logged.
func (p *brokerProcess) stopAndLog() string {
	p.stop()
	return p.log.String()
}

func get(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

func TestExporter(t *testing.T) {
	exporter := startBroker(t, true, "--auth=env", "-e", "tcp:interface=127.0.0.1:port=0", "--exporter=127.0.0.1:0").exporter

	resp, body := get(t, "http://"+exporter+"/healthz")
	if resp.StatusCode != 200 || body != "{}" || resp.Header.Get("Content-Type") != "application/json; charset=utf-8" {
		t.Errorf("GET /healthz: %s %q %q", resp.Status, resp.Header.Get("Content-Type"), body)
	}
	resp, body = get(t, "http://"+exporter+"/metrics")
	if resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	for _, want := range []string{
		"hpfeeds_broker_client_connections 0\n",
		"hpfeeds_broker_connection_made_total 0\n",
		// Lookups are measured per --auth store.
		`hpfeeds_broker_auth_lookup_failures_total{store="env"} 0` + "\n",
		"process_resident_memory_bytes ",
		"go_goroutines ",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// An exporter address that cannot be bound stops the broker at start-up
// with one line; --check-config binds nothing, so it does not mind.
func TestExporterBindFailure(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	args := []string{"--auth=env", "-e", "tcp:interface=127.0.0.1:port=0", "--exporter", taken.Addr().String()}
	code, out := run(t, nil, args...)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code == 0 || len(lines) != 1 || !strings.Contains(out, "--exporter "+taken.Addr().String()) || !strings.Contains(out, "address already in use") {
		t.Errorf("%v: exit %d, output:\n%s\nwant one line about the exporter address in use", args, code, out)
	}
	if code, out := run(t, nil, append(args, "--check-config")...); code != 0 || !strings.HasPrefix(out, "configuration OK") {
		t.Errorf("--check-config with the exporter's port taken: exit %d: %s", code, out)
	}
}

// The binary's exporter: 64 keep-alive connections idling after a request
// hold every slot, and a health probe on a fresh connection is still
// answered at once. Before, it waited until a holder let go.
func TestExporterSlotsCannotBeHeld(t *testing.T) {
	exporter := startBroker(t, true, "--auth=env", "-e", "tcp:interface=127.0.0.1:port=0", "--exporter=127.0.0.1:0").exporter
	for range 64 {
		nc, err := net.Dial("tcp", exporter)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
		nc.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(nc, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
	}
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for i := range 5 {
		resp, err := c.Get("http://" + exporter + "/healthz")
		if err != nil {
			t.Fatalf("probe %d with 64 connections held: %v", i, err)
		}
		resp.Body.Close()
	}
}
