package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
)

// noHPFEEDS is the test's environment without any HPFEEDS_* variable.
func noHPFEEDS() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HPFEEDS_") {
			env = append(env, kv)
		}
	}
	return env
}

// --auth=env without a single HPFEEDS_<NAME>_SECRET is a store with no
// users: --check-config and the broker's start say so.
func TestEmptyEnvStoreWarns(t *testing.T) {
	const warning = "credential store has no users"
	cmd := exec.Command(binary, "--check-config", "--auth=env")
	cmd.Env = noHPFEEDS()
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "configuration OK") || !strings.Contains(string(out), warning) {
		t.Errorf("--check-config: %v\n%s", err, out)
	}
	cmd = exec.Command(binary, "--auth=env", "-e", "tcp:interface=127.0.0.1:port=0")
	cmd.Env, cmd.Dir = noHPFEEDS(), t.TempDir()
	if log := startProcess(t, cmd, false).stopAndLog(); !strings.Contains(log, "level=WARN msg=\""+warning) || !strings.Contains(log, "HPFEEDS_<IDENT>_SECRET") {
		t.Errorf("start:\n%s", log)
	}
	// With a user, no warning.
	if log := startBroker(t, false, "--auth=env", "-e", "tcp:interface=127.0.0.1:port=0").stopAndLog(); strings.Contains(log, warning) {
		t.Errorf("start with a user:\n%s", log)
	}
}

// A JSON user file that is not there: the error says how to create it.
func TestMissingJSONFileHint(t *testing.T) {
	dir := t.TempDir()
	hint := "(create it with `hpfeeds-broker user init --auth=" + filepath.Join(dir, "users.json") + "`)"
	mustFail(t, dir, hint, "user", "add", "--auth=users.json", "--ident=s1")
	mustFail(t, dir, hint, "--check-config", "--auth=users.json")
	must(t, dir, "", "created", "user", "init", "--auth=users.json")
	must(t, dir, "", "added", "user", "add", "--auth=users.json", "--ident=s1")
}

// --log-format=json writes durations as seconds, a float, not as
// nanoseconds.
func TestJSONLogDurationSeconds(t *testing.T) {
	p := startBroker(t, false, "--auth=env", "--log-format=json", "-e", "tcp:interface=127.0.0.1:port=0")
	c := brokertest.Login(t, p.addr, "test", "s")
	time.Sleep(50 * time.Millisecond)
	c.Conn.Close()
	waitForLog(t, p, `"msg":"disconnect"`)
	for _, l := range strings.Split(p.stopAndLog(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(l), &rec) != nil || rec["msg"] != "disconnect" {
			continue
		}
		if d, ok := rec["duration"].(float64); !ok || d < 0.05 || d > 30 {
			t.Fatalf("duration %v, want seconds: %s", rec["duration"], l)
		}
		return
	}
	t.Fatal("no disconnect line")
}

// An exporter beyond loopback without --web-config-file shows the status
// pages to anyone: start and --check-config warn; on loopback, or behind
// a web configuration, they do not.
func TestOpenExporterWarning(t *testing.T) {
	const warning = "--exporter serves the status pages"
	webConfig := filepath.Join(t.TempDir(), "web.yml")
	os.WriteFile(webConfig, []byte("basic_auth_users:\n  admin: $2y$10$Yf6WgHT3Dqsv7d0xDvO5Qe6mVx4ZkGk9hQy0Y6l9e5c0X1GdFJ1iK\n"), 0o600)
	for _, c := range []struct {
		args []string
		warn bool
	}{
		{[]string{"--exporter=0.0.0.0:0"}, true},
		{[]string{"--exporter=:0"}, true},
		{[]string{"--exporter=127.0.0.1:0"}, false},
		{[]string{"--exporter=[::1]:0"}, false},
		{[]string{"--exporter=localhost:0"}, false},
		{[]string{"--exporter=0.0.0.0:0", "--web-config-file=" + webConfig}, false},
	} {
		args := append([]string{"--auth=env", "-e", "tcp:interface=127.0.0.1:port=0"}, c.args...)
		code, out := run(t, []string{"HPFEEDS_TEST_SECRET=s"}, append(args, "--check-config")...)
		if code != 0 || strings.Contains(out, warning) != c.warn {
			t.Errorf("--check-config %v: exit %d, want warning %v:\n%s", c.args, code, c.warn, out)
		}
		if log := startBroker(t, true, args...).stopAndLog(); strings.Contains(log, "level=WARN msg=\""+warning) != c.warn {
			t.Errorf("start %v: want warning %v:\n%s", c.args, c.warn, log)
		}
	}
}

// An endpoint whose port is taken: one line, with the exporter's hint.
func TestEndpointInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	code, out := run(t, []string{"HPFEEDS_TEST_SECRET=s"}, "--auth=env", "-e", "tcp:interface=127.0.0.1:port="+port)
	if want := "address already in use (is another process using it? give a free port)\n"; code != 1 || strings.Count(out, "\n") != 1 || !strings.HasSuffix(out, want) {
		t.Fatalf("exit %d, want one line ending %q:\n%s", code, want, out)
	}
}

// --check-config lists what it parsed after its verdict, one line each;
// an error stays one line (TestStartupErrors).
func TestCheckConfigListsParsed(t *testing.T) {
	dir := t.TempDir()
	must(t, dir, "", "", "user", "init", "--auth=users.json")
	must(t, dir, "", "", "user", "add", "--auth=users.json", "--ident=s1")
	code, out := runIn(t, dir, "", []string{"HPFEEDS_TEST_SECRET=s"}, "--check-config", "--auth=env", "--auth=users.json",
		"-e", "tcp:interface=127.0.0.1:port=0", "-e", "tcp:interface=[::1]:port=0", "--exporter=127.0.0.1:0")
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	want := []string{
		"endpoint: tcp:127.0.0.1:0",
		"endpoint: tcp:[::1]:0",
		"credential store: env",
		"credential store: json:" + filepath.Join(dir, "users.json"),
		"exporter: 127.0.0.1:0 (no --web-config-file: plain HTTP, no password)",
	}
	if code != 0 || len(lines) != 1+len(want) || !strings.HasPrefix(lines[0], "configuration OK: 2 endpoint(s)") ||
		strings.Join(lines[1:], "\n") != strings.Join(want, "\n") {
		t.Fatalf("exit %d:\n%s\nwant after the verdict:\n%s", code, out, strings.Join(want, "\n"))
	}
}

// --publish-size-buckets=false keeps the size histogram's _sum, _count and
// +Inf bucket and drops its other buckets; by default all are there.
func TestPublishSizeBucketsFlag(t *testing.T) {
	for _, buckets := range []bool{true, false} {
		cmd := exec.Command(binary, "--auth=env", "-e", "tcp:interface=127.0.0.1:port=0", "--exporter=127.0.0.1:0")
		if !buckets {
			cmd.Args = append(cmd.Args, "--publish-size-buckets=false")
		}
		cmd.Env, cmd.Dir = append(os.Environ(), "HPFEEDS_P_SECRET=s", "HPFEEDS_P_PUBCHANS=c"), t.TempDir()
		p := startProcess(t, cmd, true)
		c := brokertest.Login(t, p.addr, "p", "s")
		c.Send(brokertest.Publish(t, "p", "c", "x"))
		const series = `hpfeeds_broker_receive_publish_size_%s{chan="c",ident="p"%s} 1`
		kept := []string{fmt.Sprintf(series, "sum", ""), fmt.Sprintf(series, "count", ""), fmt.Sprintf(series, "bucket", `,le="+Inf"`)}
		bucket := fmt.Sprintf(series, "bucket", `,le="1024"`)
		var body string
		for deadline := time.Now().Add(10 * time.Second); !strings.Contains(body, kept[1]); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("buckets=%v: no %q in /metrics:\n%s", buckets, kept[1], body)
			}
			_, body = get(t, "http://"+p.exporter+"/metrics")
		}
		for _, want := range kept {
			if !strings.Contains(body, want) {
				t.Errorf("buckets=%v: /metrics lacks %q", buckets, want)
			}
		}
		if strings.Contains(body, bucket) != buckets {
			t.Errorf("buckets=%v: %q in /metrics: %v", buckets, bucket, !buckets)
		}
	}
}
