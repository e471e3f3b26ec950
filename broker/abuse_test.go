package broker_test

import (
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

// Unauthenticated clients flooding failed logins with long, escape-laden
// and impossible idents write a few lines, not one per login: each reason
// is logged at once, then at most every 10 s with a count, and idents are
// cut short. Before, this test logged 8,851 lines (2.9 MB) in 2 s.
func TestFailedLoginLogFlood(t *testing.T) {
	log := &brokertest.Log{}
	// Throttling off (brokertest's default): the most failures a second.
	srv := brokertest.Start(t, testUsers(), func(c *broker.Config) {
		c.Logger = log.Logger()
	})
	idents := []string{
		strings.Repeat("\x1b", 255), strings.Repeat("é", 127), "both", // unknown, unknown, wrong secret
		"", "a\x00b", "\xff\xfe", // impossible: empty, NUL, not UTF-8
	}
	const workers, reasons = 16, 5
	var logins atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; time.Since(start) < 2*time.Second; i++ {
				c := brokertest.Dial(t, srv.Addr)
				c.Send(c.Auth(idents[i%len(idents)], "guess"))
				if f := c.Next(); f.Op != wire.OpError {
					t.Errorf("got %v, want the login refused", f.Op)
					return
				}
				c.Conn.Close()
				logins.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	text := log.String()
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	t.Logf("%d failed logins in %v: %d log lines, %d bytes", logins.Load(), elapsed.Round(time.Millisecond), len(lines), len(text))
	if logins.Load() < 1000 {
		t.Fatalf("only %d failed logins: not a flood", logins.Load())
	}
	if max := reasons * (1 + int(elapsed/(10*time.Second))); len(lines) > max {
		t.Errorf("%d log lines, want at most %d (one per reason per 10 s):\n%s", len(lines), max, text)
	}
	for _, l := range lines {
		if len(l) > 400 {
			t.Errorf("a %d-byte line: %s", len(l), l)
		}
	}
}

// throttledGuess opens a connection from local and sends a wrong AUTH;
// the channel gets the time until the refusal came, or -1 if something
// else did (held guesses are cut when the test ends).
func throttledGuess(t *testing.T, local, addr string) <-chan time.Duration {
	c := brokertest.Handshake(t, dialFrom(t, local, addr))
	out := make(chan time.Duration, 1)
	start := time.Now()
	c.Send(c.Auth("both", "guess"))
	go func() {
		c.Conn.SetReadDeadline(time.Now().Add(time.Minute))
		if f, err := c.R.Next(); err != nil || f.Op != wire.OpError {
			out <- -1
			return
		}
		out <- time.Since(start)
	}()
	return out
}

// goodLogin logs ident in from local and round-trips a message.
func goodLogin(t *testing.T, local, addr, ident, secret string) {
	c := brokertest.Handshake(t, dialFrom(t, local, addr))
	c.Send(c.Auth(ident, secret))
	c.Sync(ident)
}

// Password guessing from one source is slowed: past After failures its
// logins are checked one at a time, each waiting from 100 ms after the
// last, doubling. A client with the right secret from another source logs
// in at once; one from the very same source (sensors behind the guesser's
// NAT) with another ident is checked second, ahead of the guesses queued
// before it.
func TestLoginThrottling(t *testing.T) {
	log := &brokertest.Log{}
	const after = 3
	srv := brokertest.Start(t, testUsers(), func(c *broker.Config) {
		c.Logger = log.Logger()
		c.LoginThrottle = broker.ThrottleConfig{After: after, MaxDelay: 3200 * time.Millisecond}
	})
	const attacker = "127.0.0.2"
	for i := 1; i <= after+4; i++ {
		took := <-throttledGuess(t, attacker, srv.Addr)
		if took < 0 {
			t.Fatalf("guess %d was not refused", i)
		}
		if want := time.Duration(0); i > after+1 {
			want = 100 * time.Millisecond << (i - after - 2)
			if took < want/2 {
				t.Errorf("guess %d refused after %v, want about %v", i, took, want)
			}
		}
	}
	// Five guesses at once: checked 0.8, 1.6, 3.2, 3.2 and 3.2 s apart.
	var held []<-chan time.Duration
	for range 5 {
		held = append(held, throttledGuess(t, attacker, srv.Addr))
	}
	time.Sleep(50 * time.Millisecond) // queued before the good logins
	goodLogin(t, "127.0.0.3", srv.Addr, "both", "bothsecret")
	start := time.Now()
	goodLogin(t, attacker, srv.Addr, "pub", "pubsecret")
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the good login from the guesser's address took %v, want it second in the queue (0.8 + 1.6 s)", took)
	}
	answered := 0
	for _, h := range held {
		select {
		case <-h:
			answered++
		default:
		}
	}
	if answered != 1 {
		t.Errorf("%d held guesses answered before the good login from their address, want 1 (round-robin by ident)", answered)
	}
	st := srv.Broker.Snapshot().Throttle
	if st.Delayed < 8 || st.Sources != 1 {
		t.Errorf("throttle stats %+v, want at least 8 delayed and 1 source", st)
	}
	if n := log.Count("repeated failed logins"); n != 1 {
		t.Errorf("%d throttling lines, want one for the source:\n%s", n, log.String())
	}
	if n := srv.Broker.Snapshot().Errors[broker.ErrorKey{Ident: "", Category: broker.CategoryInvalidSecret}]; n < after+4 {
		t.Errorf("invalid-secret %d, want every guess counted", n)
	}
}
