package main

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

var servingMetrics = regexp.MustCompile(`msg="serving metrics" addr=(\S+)`)

// startBroker runs the binary until the test ends and returns the process
// and the endpoint and exporter addresses it logged (exporter empty if
// none is expected).
func startBroker(t *testing.T, wantExporter bool, args ...string) (*exec.Cmd, string, string) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), "HPFEEDS_TEST_SECRET=s", "HPFEEDS_TEST_SUBCHANS=c")
	cmd.Dir = t.TempDir()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	sc := bufio.NewScanner(stderr)
	var addr, exporter string
	for (addr == "" || wantExporter && exporter == "") && sc.Scan() {
		if m := listening.FindStringSubmatch(sc.Text()); m != nil {
			addr = m[1]
		}
		if m := servingMetrics.FindStringSubmatch(sc.Text()); m != nil {
			exporter = m[1]
		}
	}
	if addr == "" || wantExporter && exporter == "" {
		t.Fatalf("broker never logged its addresses (endpoint %q, exporter %q)", addr, exporter)
	}
	go io.Copy(io.Discard, stderr)
	return cmd, addr, exporter
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
	_, _, exporter := startBroker(t, true, "--auth=env", "-e", "tcp:interface=127.0.0.1:port=0", "--exporter=127.0.0.1:0")

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
// with one line.
func TestExporterBindFailure(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	for _, extra := range [][]string{nil, {"--check-config"}} {
		args := append([]string{"--auth=env", "-e", "tcp:interface=127.0.0.1:port=0", "--exporter", taken.Addr().String()}, extra...)
		code, out := run(t, nil, args...)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if code == 0 || len(lines) != 1 || !strings.Contains(out, "--exporter "+taken.Addr().String()) || !strings.Contains(out, "address already in use") {
			t.Errorf("%v: exit %d, output:\n%s\nwant one line about the exporter address in use", args, code, out)
		}
	}
}
