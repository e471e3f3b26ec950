package broker_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

// reasonMax is broker.ClientTextMax, written out so that these tests also
// run, and fail, on the code before it.
const reasonMax = 512

// hostileText is what an attacker hides in a channel or an ident: clear
// screen, an OSC 52 clipboard write, fake text, conceal and cursor up.
const hostileText = "\x1b[2J\x1b[H\x1b]52;c;Y3VybCBldmlsfHNo\x07ALL SENSORS OK\x1b[8m\x1b[5A\u202e"

// countingLog keeps what a logger writes, up to 4 MiB, and counts every
// byte, so a test can bound the bytes even when they are many.
type countingLog struct {
	mu    sync.Mutex
	total int
	kept  strings.Builder
}

func (l *countingLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total += len(p)
	if l.kept.Len() < 4<<20 {
		l.kept.Write(p)
	}
	return len(p), nil
}

// A client looping refused SUBSCRIBEs with 200 KiB channel names, and
// another looping short sessions, from one address: the log keeps
// the first 20 lines of each kind, cut to bounded fields, and one summary
// line per kind with the count of the lines left out.
func TestClientSizedLogLines(t *testing.T) {
	log := &countingLog{}
	srv := brokertest.Start(t, brokertest.NewUsers(
		auth.User{Ident: "reader", Secret: "s", SubChans: []string{"ok"}},
	), func(c *broker.Config) { c.Logger = slog.New(slog.NewTextHandler(log, nil)) })
	huge := strings.Repeat(hostileText, 200<<10/len(hostileText))
	const loops = 60
	for range loops {
		c := brokertest.Login(t, srv.Addr, "reader", "s")
		c.Send(brokertest.Subscribe(t, "reader", huge))
		c.ExpectError(wire.NotAllowed(wire.ErrNoSubscribePrefix, "reader", huge))
		c.Conn.Close()
	}
	for range loops {
		c := brokertest.Login(t, srv.Addr, "reader", "s")
		c.Send(brokertest.Subscribe(t, "reader", "no"))
		c.ExpectError(wire.NotAllowed(wire.ErrNoSubscribePrefix, "reader", "no"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Broker.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	log.mu.Lock()
	total, text := log.total, log.kept.String()
	log.mu.Unlock()
	t.Logf("%d logins: %d bytes of log", 2*loops, total)
	// 40 lines of at most ClientTextMax bytes escaped 4 to 1, and 2 summaries.
	if limit := 40*(4*reasonMax+400) + 2*400; total > limit {
		t.Fatalf("%d bytes of log, want at most %d", total, limit)
	}
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if !strings.Contains(lines[0], "msg=login ident=reader ") {
		t.Errorf("first line %q, want the first login", lines[0])
	}
	// The first disconnect: the broker may log the next login before it,
	// since the client dials again as soon as it has read the error.
	firstRefusal := `msg=disconnect ident=reader addr=127.0.0.1:`
	wantReason := (`reason="Authkey not allowed to sub here. ident=reader, chan=\x1b[2J\x1b[H\x1b]52;c;`)
	var disconnect string
	for _, l := range lines {
		if strings.Contains(l, firstRefusal) {
			disconnect = l
			break
		}
	}
	if !strings.Contains(disconnect, wantReason) || !strings.Contains(disconnect, " bytes)\" frames_in=") {
		t.Errorf("first disconnect line %q, want its reason cut", disconnect)
	}
	for _, want := range []string{
		`msg="login lines left out: over 20 a minute from this source" source=127.0.0.1/32 suppressed=100 `,
		`msg="disconnect lines left out: over 20 a minute from this source" source=127.0.0.1/32 suppressed=100 `,
	} {
		if strings.Count(text, want) != 1 {
			t.Errorf("want one line with %q in:\n%s", want, text)
		}
	}
	if n := strings.Count(text, "msg=login "); n != 20 {
		t.Errorf("%d login lines, want the first 20", n)
	}
}

// A refused SUBSCRIBE's channel and a spoofed PUBLISH's ident reach the
// status pages as disconnect reasons, cut to ClientTextMax bytes.
func TestDisconnectReasonCapped(t *testing.T) {
	srv := brokertest.Start(t, brokertest.NewUsers(
		auth.User{Ident: "reader", Secret: "s", SubChans: []string{"ok"}},
		auth.User{Ident: "writer", Secret: "s", PubChans: []string{"ok"}},
	))
	huge := strings.Repeat(hostileText, 512<<10/len(hostileText))
	c := brokertest.Login(t, srv.Addr, "reader", "s")
	c.Send(brokertest.Subscribe(t, "reader", huge))
	c.ExpectError(wire.NotAllowed(wire.ErrNoSubscribePrefix, "reader", huge))
	spoof := strings.Repeat("\x1b[8m", 255/4)
	c = brokertest.Login(t, srv.Addr, "writer", "s")
	c.Send(brokertest.Publish(t, spoof, "ok", "x"))
	c.ExpectError(wire.IdentMismatch(spoof))

	full := wire.NotAllowed(wire.ErrNoSubscribePrefix, "reader", huge)
	var got map[string]string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		got = map[string]string{}
		for _, in := range srv.Broker.Idents(time.Hour) {
			got[in.Ident] = in.LastReason
		}
		if got["reader"] != "" && got["writer"] != "" {
			break
		}
	}
	r := got["reader"]
	cut := strings.TrimSuffix(r, fmt.Sprintf("…(+%d bytes)", len(full)-reasonMax))
	if len(r) > reasonMax+20 || cut == r || !strings.HasPrefix(full, cut) {
		t.Errorf("reader's reason is %d bytes: %.80q…", len(r), r)
	}
	if got["writer"] != wire.IdentMismatch(spoof) {
		t.Errorf("writer's reason %q, want %q", got["writer"], wire.IdentMismatch(spoof))
	}
}
