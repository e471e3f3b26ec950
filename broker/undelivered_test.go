package broker_test

import (
	"testing"

	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
)

func undelivered(b *broker.Broker, channel string) uint64 {
	return b.Snapshot().Undelivered[channel]
}

// Every message published to a channel nobody subscribes to is counted;
// once a subscriber is there, the count stops growing. The /chanz view
// flags the channel only while it has a publisher and no subscriber.
func TestUndeliveredPublishes(t *testing.T) {
	srv := brokertest.Start(t, testUsers())
	p := brokertest.Login(t, srv.Addr, "pub", "pubsecret")
	for range 5 {
		p.Send(brokertest.Publish(t, "pub", "chan", "lost"))
	}
	p.Sync("pub")
	if n := undelivered(srv.Broker, "chan"); n != 5 {
		t.Fatalf("undelivered %d, want 5", n)
	}
	c := channelInfo(srv.Broker, "chan")
	if !c.Unheard || c.Undelivered != 5 || c.UndeliveredRate <= 0 {
		t.Errorf("no subscriber: %+v", c)
	}

	s := brokertest.Login(t, srv.Addr, "sub", "subsecret")
	s.SubscribeSync("sub", "chan")
	for range 3 {
		p.Send(brokertest.Publish(t, "pub", "chan", "heard"))
		s.ExpectMessage("pub", "chan", "heard")
	}
	if n := undelivered(srv.Broker, "chan"); n != 5 {
		t.Errorf("undelivered %d with a subscriber, want still 5", n)
	}
	if c := channelInfo(srv.Broker, "chan"); c.Unheard || c.Undelivered != 5 {
		t.Errorf("with a subscriber: %+v", c)
	}
	// The sync channel had its subscriber all along.
	if n := undelivered(srv.Broker, brokertest.SyncChannel); n != 0 {
		t.Errorf("sync: undelivered %d", n)
	}
}

func channelInfo(b *broker.Broker, name string) broker.ChannelInfo {
	for _, c := range b.Channels() {
		if c.Name == name {
			return c
		}
	}
	return broker.ChannelInfo{}
}
