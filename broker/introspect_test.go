package broker_test

import (
	"sync"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
)

// Scrapes read each connection's own subscription list and take no
// channel's lock: with a subscribe holding a busy channel's write lock
// (before, a scrape walking 50,000 subscribers under the read lock made
// that subscribe, and every publish queued behind it, wait), every status
// and metrics walk still completes, and counts what it should.
func TestScrapesTakeNoChannelLock(t *testing.T) {
	const subs = 200
	srv := brokertest.Start(t, brokertest.NewUsers(
		auth.User{Ident: "sub", Secret: "s", SubChans: []string{"busy", "sync"}, PubChans: []string{"sync"}}))
	for range subs {
		brokertest.Login(t, srv.Addr, "sub", "s").SubscribeSync("sub", "busy")
	}
	b := srv.Broker
	release := sync.OnceFunc(broker.HoldChannelLock(b, "busy"))
	defer release()
	done := make(chan struct{})
	var (
		conns  []broker.ConnInfo
		snap   *broker.Snapshot
		chans  []broker.ChannelInfo
		idents []broker.IdentInfo
	)
	go func() {
		defer close(done)
		conns, snap, chans, idents = b.Connections(), b.Snapshot(), b.Channels(), b.Idents(time.Hour)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		release()
		<-done
		t.Fatal("a scrape waited for a channel's lock")
	}
	var listed int
	for _, c := range conns {
		if len(c.Subscriptions) == 2 && c.Subscriptions[0] == "busy" && c.Subscriptions[1] == "sync" {
			listed++
		}
	}
	if listed != subs {
		t.Errorf("/connz lists %d connections subscribed to busy and sync, want %d", listed, subs)
	}
	if n := snap.Subscriptions[broker.IdentChan{Ident: "sub", Chan: "busy"}]; n != subs {
		t.Errorf("metrics count %d subscriptions to busy, want %d", n, subs)
	}
	for _, c := range chans {
		if c.Name == "busy" && c.Subscribers != subs {
			t.Errorf("/chanz: busy has %d subscribers, want %d", c.Subscribers, subs)
		}
	}
	if len(idents) != 1 || idents[0].Connections != subs {
		t.Errorf("/identz: %+v, want sub with %d connections", idents, subs)
	}
}
