package broker_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
	"github.com/hpfeeds-go/hpfeeds/retain"
)

// A subscriber that leaves and comes back while a publisher keeps
// publishing gets every message after those it read, in order, through
// catch-up and the switch to live delivery; run under -race, this
// exercises the catch-up goroutine, the publish path, the end of a
// subscription and the checkpoints together.
func TestRetainCatchUpWhilePublishing(t *testing.T) {
	e, err := retain.Open(retain.Options{Patterns: []string{"chan"}, Dir: t.TempDir(), Wildcard: "r.*",
		Subject: func(ch string) string { return "r.c" + fmt.Sprintf("%x", ch) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	users := brokertest.NewUsers(
		auth.User{Ident: "pub", Secret: "p", PubChans: []string{"chan"}},
		auth.User{Ident: "sub", Secret: "s", SubChans: []string{"chan", "sync"}, PubChans: []string{"sync"}})
	srv := brokertest.Start(t, users, func(c *broker.Config) { c.Retain = e })
	sub := brokertest.Login(t, srv.Addr, "sub", "s")
	sub.SubscribeSync("sub", "chan")
	pub := brokertest.Login(t, srv.Addr, "pub", "p")
	const total, cut = 20000, 3000
	var wg sync.WaitGroup
	wg.Add(1)
	// The publisher waits at the cut until the subscriber has read all
	// it sent and left: what a client has received but not read is
	// acknowledged by its kernel, so the broker counts it as delivered
	// (docs/retention.md); here nothing is unread, so nothing may be lost.
	left := make(chan struct{})
	go func() {
		defer wg.Done()
		for i := range total {
			if i == cut {
				<-left
			}
			pub.Send(brokertest.Publish(t, "pub", "chan", fmt.Sprint(i)))
			if i%1000 == 999 {
				time.Sleep(20 * time.Millisecond)
			}
		}
	}()
	next := 0
	read := func(c *brokertest.Client, until int) {
		for next < until {
			f := c.Next()
			if brokertest.IsSync(f) {
				continue
			}
			if got := string(f.Payload); got != fmt.Sprint(next) {
				t.Fatalf("got %s, want %d", got, next)
			}
			next++
		}
	}
	read(sub, cut)
	sub.Conn.Close()
	time.Sleep(100 * time.Millisecond)
	close(left) // the rest is published while the subscriber catches up
	sub = brokertest.Login(t, srv.Addr, "sub", "s")
	sub.Send(brokertest.Subscribe(t, "sub", "chan"))
	f := sub.Next()
	first := 0
	fmt.Sscan(string(f.Payload), &first)
	if first > next {
		t.Fatalf("resumed at %d after reading up to %d: lost messages", first, next-1)
	}
	next = first + 1
	read(sub, total)
	wg.Wait()
}

// Each connection of an ident gets every live message; the last to leave
// a channel writes the ident's position there.
func TestRetainIdentConnectionsShare(t *testing.T) {
	e, err := retain.Open(retain.Options{Patterns: []string{"chan"}, Dir: t.TempDir(), Wildcard: "r.*",
		Subject: func(ch string) string { return "r.c" + fmt.Sprintf("%x", ch) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	users := brokertest.NewUsers(
		auth.User{Ident: "pub", Secret: "p", PubChans: []string{"chan", "sync"}, SubChans: []string{"sync"}},
		auth.User{Ident: "sub", Secret: "s", SubChans: []string{"chan", "sync"}, PubChans: []string{"sync"}})
	srv := brokertest.Start(t, users, func(c *broker.Config) { c.Retain = e })
	sub1 := brokertest.Login(t, srv.Addr, "sub", "s")
	sub1.SubscribeSync("sub", "chan")
	sub2 := brokertest.Login(t, srv.Addr, "sub", "s")
	sub2.SubscribeSync("sub", "chan")
	pub := brokertest.Login(t, srv.Addr, "pub", "p")
	publish := func(from, to int) {
		for i := from; i < to; i++ {
			pub.Send(brokertest.Publish(t, "pub", "chan", fmt.Sprint(i)))
		}
	}
	publish(0, 100)
	for i := range 100 {
		sub1.ExpectMessage("pub", "chan", fmt.Sprint(i))
		sub2.ExpectMessage("pub", "chan", fmt.Sprint(i))
	}
	sub1.Conn.Close()
	publish(100, 200)
	for i := 100; i < 200; i++ {
		sub2.ExpectMessage("pub", "chan", fmt.Sprint(i))
	}
	time.Sleep(100 * time.Millisecond) // sub1's end seen while sub2 is still subscribed
	sub2.Conn.Close()
	brokertest.Eventually(t, "sub's position saved", func() bool {
		return srv.Broker.RetainLags()["sub"] != nil
	})
	publish(200, 210) // while the ident is away
	sub3 := brokertest.Login(t, srv.Addr, "sub", "s")
	sub3.Send(brokertest.Subscribe(t, "sub", "chan"))
	for i := 200; i < 210; i++ { // from where the last to leave stopped
		sub3.ExpectMessage("pub", "chan", fmt.Sprint(i))
	}
}
