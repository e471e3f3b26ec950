package broker_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
)

// chanSubscribers starts a broker with two subscribers of "chan", a
// channel whose runs of frames are held (conn.fanOut).
func chanSubscribers(t *testing.T) (*brokertest.Server, []*brokertest.Client) {
	srv := brokertest.Start(t, testUsers())
	var subs []*brokertest.Client
	for range 2 {
		s := brokertest.Login(t, srv.Addr, "sub", "subsecret")
		s.SubscribeSync("sub", "chan")
		subs = append(subs, s)
	}
	return srv, subs
}

// numbered is n PUBLISH frames of ident on "chan", their payloads from
// to from+n-1.
func numbered(t *testing.T, ident string, from, n int) [][]byte {
	var frames [][]byte
	for i := from; i < from+n; i++ {
		frames = append(frames, brokertest.Publish(t, ident, "chan", fmt.Sprint(i)))
	}
	return frames
}

// expectNumbered has each of subs read the messages numbered sends.
func expectNumbered(subs []*brokertest.Client, ident string, from, n int) {
	for _, s := range subs {
		for i := from; i < from+n; i++ {
			s.ExpectMessage(ident, "chan", fmt.Sprint(i))
		}
	}
}

// A run of frames held for a channel's subscribers (conn.fanOut) is still
// queued when a later frame of the same read ends the session.
func TestFanOutDeliversWhatCameBeforeARefusedFrame(t *testing.T) {
	srv, subs := chanSubscribers(t)
	p := brokertest.Login(t, srv.Addr, "pub", "pubsecret")
	p.Send(append(numbered(t, "pub", 0, 20), brokertest.Publish(t, "pub", "forbidden", "refused"))...)
	expectNumbered(subs, "pub", 0, 20)
	for _, s := range subs {
		s.ExpectSilence()
	}
}

// A run held for a channel goes to its subscribers before the publisher
// itself subscribes to it or unsubscribes: a connection gets the messages
// it published while subscribed, and only those, whatever shares the read.
func TestFanOutRunGoesBeforeThePublishersSubscribe(t *testing.T) {
	srv, subs := chanSubscribers(t)
	p := brokertest.Login(t, srv.Addr, "both", "bothsecret")
	read := numbered(t, "both", 0, 2)
	read = append(read, brokertest.Subscribe(t, "both", "chan"))
	read = append(read, numbered(t, "both", 2, 2)...)
	read = append(read, brokertest.Unsubscribe(t, "both", "chan"))
	p.Send(append(read, numbered(t, "both", 4, 2)...)...)
	expectNumbered(subs, "both", 0, 6)
	expectNumbered([]*brokertest.Client{p}, "both", 2, 2)
	p.ExpectSilence()
}

// A run is one block in a queue but as many messages in the counts:
// frames_out, hpfeeds_broker_messages_delivered_total and
// hpfeeds_broker_frames_written_total count its frames.
func TestFanOutCountsFramesNotBlocks(t *testing.T) {
	srv, subs := chanSubscribers(t)
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
	// Setup wrote three frames to "sub": each subscriber's Sync ping, and
	// the second's ping to the first, which may still be in flight when
	// chanSubscribers returns; so the counts are checked whole, not as
	// increments over a baseline taken now.
	const setup = 3
	p.Send(numbered(t, "pub", 0, 50)...)
	expectNumbered(subs, "pub", 0, 50)
	// The writer counts a frame once its write returns, which may be
	// after the client has read it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, del, wr := counts()
		if out == setup+100 && del == setup+100 && wr == setup+100 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 50 messages to 2 subscribers and %d sync pings: frames_out %d, delivered %d, frames written %d; want %d each",
				setup, out, del, wr, setup+100)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
