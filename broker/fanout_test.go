package broker_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
)

// A run of frames held for a channel's subscribers (conn.fanOut) is still
// queued when a later frame of the same read ends the session.
func TestFanOutDeliversWhatCameBeforeARefusedFrame(t *testing.T) {
	srv := brokertest.Start(t, testUsers())
	s1 := brokertest.Login(t, srv.Addr, "sub", "subsecret")
	s1.SubscribeSync("sub", "chan")
	s2 := brokertest.Login(t, srv.Addr, "sub", "subsecret")
	s2.SubscribeSync("sub", "chan")
	p := brokertest.Login(t, srv.Addr, "pub", "pubsecret")
	var burst [][]byte
	for i := range 20 {
		burst = append(burst, brokertest.Publish(t, "pub", "chan", fmt.Sprint(i)))
	}
	p.Send(append(burst, brokertest.Publish(t, "pub", "forbidden", "refused"))...)
	for _, s := range []*brokertest.Client{s1, s2} {
		for i := range 20 {
			s.ExpectMessage("pub", "chan", fmt.Sprint(i))
		}
		s.ExpectSilence()
	}
}

// A run held for a channel goes to its subscribers before the publisher
// itself subscribes to it or unsubscribes: a connection gets the messages
// it published while subscribed, and only those, whatever shares the read.
func TestFanOutRunGoesBeforeThePublishersSubscribe(t *testing.T) {
	srv := brokertest.Start(t, testUsers())
	s1 := brokertest.Login(t, srv.Addr, "sub", "subsecret")
	s1.SubscribeSync("sub", "chan")
	s2 := brokertest.Login(t, srv.Addr, "sub", "subsecret")
	s2.SubscribeSync("sub", "chan")
	p := brokertest.Login(t, srv.Addr, "both", "bothsecret")
	p.Send(brokertest.Publish(t, "both", "chan", "0"),
		brokertest.Publish(t, "both", "chan", "1"),
		brokertest.Subscribe(t, "both", "chan"),
		brokertest.Publish(t, "both", "chan", "2"),
		brokertest.Publish(t, "both", "chan", "3"),
		brokertest.Unsubscribe(t, "both", "chan"),
		brokertest.Publish(t, "both", "chan", "4"),
		brokertest.Publish(t, "both", "chan", "5"))
	for _, s := range []*brokertest.Client{s1, s2} {
		for i := range 6 {
			s.ExpectMessage("both", "chan", fmt.Sprint(i))
		}
	}
	p.ExpectMessage("both", "chan", "2")
	p.ExpectMessage("both", "chan", "3")
	p.ExpectSilence()
}

// A run is one block in a queue but as many messages in the counts:
// frames_out, hpfeeds_broker_messages_delivered_total and
// hpfeeds_broker_frames_written_total count its frames.
func TestFanOutCountsFramesNotBlocks(t *testing.T) {
	srv := brokertest.Start(t, testUsers())
	s1 := brokertest.Login(t, srv.Addr, "sub", "subsecret")
	s1.SubscribeSync("sub", "chan")
	s2 := brokertest.Login(t, srv.Addr, "sub", "subsecret")
	s2.SubscribeSync("sub", "chan")
	p := brokertest.Login(t, srv.Addr, "pub", "pubsecret")
	counts := func() (framesOut, delivered, written uint64) {
		for _, c := range srv.Broker.Connections() {
			if c.Ident == "sub" {
				framesOut += c.FramesOut
			}
		}
		st := srv.Broker.Snapshot().Idents["sub"]
		return framesOut, st.Delivered, st.FramesWritten
	}
	out0, del0, wr0 := counts()
	var burst [][]byte
	for i := range 50 {
		burst = append(burst, brokertest.Publish(t, "pub", "chan", fmt.Sprint(i)))
	}
	p.Send(burst...)
	for _, s := range []*brokertest.Client{s1, s2} {
		for i := range 50 {
			s.ExpectMessage("pub", "chan", fmt.Sprint(i))
		}
	}
	// The writer counts a frame once its write returns, which may be
	// after the client has read it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, del, wr := counts()
		if out-out0 == 100 && del-del0 == 100 && wr-wr0 == 100 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 50 messages to 2 subscribers: frames_out +%d, delivered +%d, frames written +%d; want +100 each",
				out-out0, del-del0, wr-wr0)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
