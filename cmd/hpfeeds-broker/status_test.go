package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/hpfeeds-go/hpfeeds/auth/storetest"
	"github.com/hpfeeds-go/hpfeeds/status"
)

// `hpfeeds-broker status` against the real binary: tables, --json, the
// sensor that went quiet after --stale-after, and the JSON log lines of
// logins and disconnects.
func TestStatusCommand(t *testing.T) {
	for ident, chans := range map[string]string{"SENSOR": "events,sensor", "QUIET": "events,quiet", "LOGGER": "logger"} {
		t.Setenv("HPFEEDS_"+ident+"_SECRET", "s")
		t.Setenv("HPFEEDS_"+ident+"_PUBCHANS", chans)
		t.Setenv("HPFEEDS_"+ident+"_SUBCHANS", strings.ToLower(ident)+",events")
	}
	p := startBroker(t, true, "--auth=env", "-e", "tcp:interface=127.0.0.1:port=0", "--exporter=127.0.0.1:0",
		"--stale-after=1s", "--log-format=json")
	url := "http://" + p.exporter
	quiet := dialAs(t, p.addr, "quiet")
	quiet.publish("once")
	quiet.Conn.Close()
	logger := dialAs(t, p.addr, "logger", "events")
	sensor := dialAs(t, p.addr, "sensor")

	var r status.Report
	deadline := time.Now().Add(10 * time.Second)
	for {
		sensor.publish("hello")
		logger.next(5 * time.Second)
		code, out := run(t, nil, "status", "--url", url, "--json")
		if code != 0 {
			t.Fatalf("status --json: exit %d: %s", code, out)
		}
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("status --json: %v in %s", err, out)
		}
		// dialAs syncs by publishing on the ident's channel, so the
		// logger is a sensor gone quiet too.
		if r.Identz.Stale == 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(300 * time.Millisecond) // within the pages one address may ask a second

	}
	if r.Identz.Stale != 2 || r.Connz.Total != 2 || len(r.Chanz.Channels) != 4 {
		b, _ := json.Marshal(r)
		t.Fatalf("status --json: %s", b)
	}
	code, out := run(t, nil, "status", "--url", url)
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^quiet +quiet +STALE +0 `),
		regexp.MustCompile(`(?m)^sensor +sensor +connected +1 +(just now|\d+s ago) `),
		regexp.MustCompile(`(?m)^logger +logger +STALE +1 `),
		regexp.MustCompile(`(?m)^events +1 +1 `),
		regexp.MustCompile(`(?m)^CONNECTIONS \(2 of 2\)$`),
	} {
		if code != 0 || !want.MatchString(out) {
			t.Errorf("status: exit %d, no line matching %s in:\n%s", code, want, out)
		}
	}

	logged := p.stopAndLog()
	lines := map[string]int{}
	for _, l := range strings.Split(strings.TrimSpace(logged), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("--log-format=json wrote %q", l)
		}
		switch m["msg"] {
		case "login":
			lines["login "+m["ident"].(string)]++
		case "disconnect":
			lines["disconnect "+m["ident"].(string)+" "+m["reason"].(string)]++
		}
	}
	for _, want := range []string{"login quiet", "login sensor", "login logger",
		"disconnect quiet closed by the client", "disconnect sensor broker shutting down"} {
		if lines[want] != 1 {
			t.Errorf("%d lines %q in:\n%s", lines[want], want, logged)
		}
	}
}

// An exporter that is not there is one line and exit 1.
func TestStatusUnreachable(t *testing.T) {
	code, out := run(t, nil, "status", "--url", "http://127.0.0.1:1")
	if code != 1 || strings.Count(out, "\n") != 1 ||
		!strings.HasPrefix(out, "hpfeeds-broker: http://127.0.0.1:1: exporter not reachable: ") || !strings.Contains(out, "connection refused") {
		t.Errorf("exit %d: %q", code, out)
	}
}

func TestLogFlags(t *testing.T) {
	for _, c := range []struct{ flag, want string }{
		{"--log-format=xml", `--log-format "xml": want text or json`},
		{"--log-level=loud", `--log-level "loud": want debug, info, warn or error`},
	} {
		code, out := run(t, nil, "--auth=env", c.flag)
		if code != 1 || out != "hpfeeds-broker: "+c.want+"\n" {
			t.Errorf("%s: exit %d: %q", c.flag, code, out)
		}
	}
}

// --version says the version, the commit and the Go version: what `make
// release` sets from git, else what the toolchain recorded.
func TestVersion(t *testing.T) {
	code, out := run(t, nil, "--version")
	if code != 0 || !strings.HasPrefix(out, "hpfeeds-broker ") || !strings.HasSuffix(out, ", "+runtime.Version()+")\n") {
		t.Errorf("--version: exit %d: %q", code, out)
	}
	bin := filepath.Join(t.TempDir(), "hpfeeds-broker")
	const pkg = "github.com/hpfeeds-go/hpfeeds/internal/version"
	build := exec.Command("go", "build", "-o", bin, "-ldflags=-X "+pkg+".Version=v9.8.7 -X "+pkg+".Commit=0123456789ab", ".")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	b, err := exec.Command(bin, "--version").Output()
	if want := "hpfeeds-broker v9.8.7 (commit 0123456789ab, " + runtime.Version() + ")\n"; err != nil || string(b) != want {
		t.Errorf("with -ldflags: %q (%v), want %q", b, err, want)
	}
	// make release passes the same flags, from git.
	mk := exec.Command("make", "-n", "release", "VERSION=v9.8.7", "COMMIT=0123456789ab")
	mk.Dir = "../.."
	b, err = mk.Output()
	if err != nil || !strings.Contains(string(b), "-X "+pkg+".Version=v9.8.7") || !strings.Contains(string(b), "-X "+pkg+".Commit=0123456789ab") {
		t.Errorf("make -n release: %v\n%s", err, b)
	}
	os.Remove(bin)
}

// Sessions follow the store the broker runs on: a user removed with `user
// remove` is disconnected, and channels narrowed by another tool writing
// the database (as CHN and MHN do) are enforced, each with one log line.
func TestSessionsFollowTheStore(t *testing.T) {
	if _, err := exec.LookPath("sqlite3"); err != nil {
		storetest.Missing(t, "no sqlite3 shell; `make deps` installs it")
	}
	db := filepath.Join(t.TempDir(), "users.db")
	for _, u := range [][]string{
		{"--ident=gone", "--pubchans=gone", "--subchans=gone"},
		{"--ident=logger", "--pubchans=logger", "--subchans=logger,events"},
		{"--ident=sensor", "--pubchans=sensor,events", "--subchans=sensor"},
	} {
		if code, out := run(t, nil, append([]string{"user", "add", "--auth=" + db, "--secret=s"}, u...)...); code != 0 {
			t.Fatalf("user add: %s", out)
		}
	}
	p := startBroker(t, false, "--auth="+db, "-e", "tcp:interface=127.0.0.1:port=0", "--revalidate-every=100ms")
	gone := dialAs(t, p.addr, "gone")
	logger := dialAs(t, p.addr, "logger", "events")
	sensor := dialAs(t, p.addr, "sensor")

	if code, out := run(t, nil, "user", "remove", "--auth="+db, "--ident=gone"); code != 0 {
		t.Fatalf("user remove: %s", out)
	}
	gone.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if f, err := gone.R.Next(); err != nil || string(f.Payload) != "Authentication failed for gone" {
		t.Errorf("the removed user's session got %v %q, want the ERROR", err, f.Payload)
	}

	sensor.publish("before")
	if _, payload, ok := logger.next(5 * time.Second); !ok || payload != "before" {
		t.Fatalf("logger got %q before the change", payload)
	}
	if out, err := exec.Command("sqlite3", "-cmd", ".timeout 5000", db, `UPDATE authkeys SET subchans='["logger"]' WHERE ident='logger'`).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	waitForLog(t, p, `msg="session follows changed user in the store" ident=logger`)
	sensor.publish("after")
	if _, payload, ok := logger.next(500 * time.Millisecond); ok {
		t.Errorf("logger still receives events after losing them: %q", payload)
	}
	logged := p.stopAndLog()
	for _, want := range []string{
		`msg="session closed: user removed from the store" ident=gone`,
		`msg=disconnect ident=gone addr=`,
		`dropped_subscriptions=[events]`,
	} {
		if strings.Count(logged, want) != 1 {
			t.Errorf("want one %q in:\n%s", want, logged)
		}
	}
}

func waitForLog(t *testing.T, p *brokerProcess, want string) {
	t.Helper()
	waitLog(t, p, want, 1)
}

// --watch redraws until interrupted, then exits 0.
func TestStatusWatch(t *testing.T) {
	p := startBroker(t, true, "--auth=env", "-e", "tcp:interface=127.0.0.1:port=0", "--exporter=127.0.0.1:0")
	cmd := exec.Command(binary, "status", "--url", "http://"+p.exporter, "--watch")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	const clear = "\033[H\033[2J"
	var seen strings.Builder
	buf := make([]byte, 4096)
	for strings.Count(seen.String(), clear) < 3 {
		n, err := out.Read(buf)
		if err != nil {
			t.Fatalf("status --watch stopped: %v after:\n%s", err, seen.String())
		}
		seen.Write(buf[:n])
	}
	cmd.Process.Signal(os.Interrupt)
	if err := cmd.Wait(); err != nil {
		t.Errorf("interrupted: %v", err)
	}
	for _, frame := range strings.Split(seen.String(), clear)[1:3] {
		if !strings.HasPrefix(frame, "SENSORS (0 idents") || !strings.Contains(frame, "CONNECTIONS (0 of 0)") {
			t.Errorf("a redraw shows %q", frame)
		}
	}
}

// An exporter behind --web-config-file (TLS and basic authentication):
// the status command takes the password in the URL and the CA with
// --tls-ca, and says in one line when the password is missing.
func TestStatusBehindWebConfig(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "exporter.crt"), filepath.Join(dir, "exporter.key")
	if out, err := exec.Command("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
		"-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
		"-keyout", key, "-out", cert).CombinedOutput(); err != nil {
		t.Fatalf("openssl: %v\n%s", err, out)
	}
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "web.yml")
	os.WriteFile(cfg, fmt.Appendf(nil, "tls_server_config:\n  cert_file: %s\n  key_file: %s\nbasic_auth_users:\n  ops: %s\n", cert, key, hash), 0o600)
	p := startBroker(t, true, "--auth=env", "-e", "tcp:interface=127.0.0.1:port=0", "--exporter=127.0.0.1:0", "--web-config-file", cfg)

	code, out := run(t, nil, "status", "--url", "https://ops:s3cret@"+p.exporter, "--tls-ca", cert)
	if code != 0 || !strings.Contains(out, "CONNECTIONS (0 of 0)") {
		t.Errorf("with the password: exit %d:\n%s", code, out)
	}
	code, out = run(t, nil, "status", "--url", "https://"+p.exporter, "--tls-ca", cert)
	if code != 1 || strings.Count(out, "\n") != 1 || !strings.Contains(out, "401 Unauthorized") {
		t.Errorf("without the password: exit %d: %q", code, out)
	}
	code, out = run(t, nil, "status", "--url", "https://ops:wrong@"+p.exporter, "--tls-ca", cert)
	if code != 1 || !strings.Contains(out, "401 Unauthorized") || strings.Contains(out, "wrong") {
		t.Errorf("a wrong password: exit %d: %q (the password must not be shown)", code, out)
	}
	code, out = run(t, nil, "status", "--url", "https://ops:s3cret@"+p.exporter)
	if code != 1 || strings.Count(out, "\n") != 1 || !strings.Contains(out, "certificate") {
		t.Errorf("without --tls-ca: exit %d: %q", code, out)
	}
}
