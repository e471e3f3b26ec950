package broker_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
	"github.com/hpfeeds-go/hpfeeds/internal/guesser"
)

// Guessing over many connections at once, each guess pipelined and
// abandoned after 20 ms, gets no more secrets checked than one guesser
// waiting for each answer: the broker checks a throttled source's logins one
// at a time. The guesser's connections cost the broker no more than its own
// open ones plus the bounded queue, and a sensor with the right secret
// behind the same address logs in within two intervals (two idents queued).
func TestParallelGuessing(t *testing.T) {
	const (
		after    = 3
		maxDelay = 400 * time.Millisecond
		conns    = 64
		run      = 3 * time.Second
		rightAt  = 2000 // the guess that holds the secret
	)
	srv := brokertest.Start(t, testUsers(), func(c *broker.Config) {
		c.LoginThrottle = broker.ThrottleConfig{After: after, MaxDelay: maxDelay}
	})
	ctx, cancel := context.WithTimeout(context.Background(), run)
	defer cancel()
	var peak atomic.Int64
	go func() {
		for ctx.Err() == nil {
			if n := int64(srv.Broker.Snapshot().Connections); n > peak.Load() {
				peak.Store(n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	loginTook := make(chan time.Duration, 1)
	go func() {
		time.Sleep(run / 2)
		start := time.Now()
		c := brokertest.Handshake(t, dialFrom(t, "127.0.0.2", srv.Addr))
		c.Send(c.Auth("pub", "pubsecret"))
		c.Sync("pub")
		loginTook <- time.Since(start)
	}()
	r := guesser.Run(ctx, guesser.Config{
		Addr: srv.Addr, Local: "127.0.0.2", Ident: "both", Channel: "chan",
		Conns: conns, Abandon: 20 * time.Millisecond,
		Secret: func(i int) string {
			if i == rightAt {
				return "bothsecret"
			}
			return fmt.Sprint("guess", i)
		},
	})
	snap := srv.Broker.Snapshot()
	checked := snap.Errors[broker.ErrorKey{Category: broker.CategoryInvalidSecret}]
	t.Logf("%+v; %d checked in %v; peak %d connections; %+v", r, checked, run, peak.Load(), snap.Throttle)
	if r.Found != "" {
		t.Errorf("the secret was found, guess %d of %d sent", rightAt, r.Tries)
	}
	// After quick failures, then one check per interval of at least 100 ms.
	if bound := uint64(after + int(run/(100*time.Millisecond)) + 2); checked > bound {
		t.Errorf("%d guesses checked in %v, want at most %d", checked, run, bound)
	}
	if r.Found == "" && r.Tries < 10*int64(checked) {
		t.Errorf("the guesser sent only %d guesses: the attack did not run", r.Tries)
	}
	if bound := int64(3 * conns); peak.Load() > bound {
		t.Errorf("peak %d connections open, want at most %d (the guesser's own and the queue)", peak.Load(), bound)
	}
	select {
	case took := <-loginTook:
		t.Logf("the good login took %v", took)
		if took > 2*maxDelay+2*time.Second {
			t.Errorf("a good login from the guesser's address took %v, want within two intervals (%v)", took, 2*maxDelay)
		}
	case <-time.After(5 * time.Second):
		t.Error("a good login from the guesser's address did not complete")
	}
}
