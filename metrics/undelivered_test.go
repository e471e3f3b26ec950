package metrics_test

import (
	"testing"

	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
)

// Publishes nobody subscribes to are counted per channel; a channel with a
// subscriber stays at 0.
func TestPublishesUndelivered(t *testing.T) {
	e := startExported(t, testUsers())
	s := brokertest.Dial(t, e.Addr)
	s.Send(s.Auth("sub", "subsecret"), brokertest.Subscribe(t, "sub", "chan"))
	e.waitValue(t, 1, "hpfeeds_broker_subscriptions", "ident", "sub", "chan", "chan")
	p := brokertest.Dial(t, e.Addr)
	p.Send(p.Auth("pub", "pubsecret"),
		brokertest.Publish(t, "pub", "other", "lost"), brokertest.Publish(t, "pub", "chan", "heard"),
		brokertest.Publish(t, "pub", "other", "lost"))
	s.ExpectMessage("pub", "chan", "heard")
	e.waitValue(t, 2, "hpfeeds_broker_publishes_undelivered_total", "chan", "other")
	if got := e.scrape(t).value("hpfeeds_broker_publishes_undelivered_total", "chan", "chan"); got != 0 {
		t.Errorf("chan: %v undelivered", got)
	}
}
