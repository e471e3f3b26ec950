package broker_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
)

// A publisher's frames for a channel with one subscriber are queued a read
// at a time (conn.queueFanIn), and runs of its frames for a channel with
// several (conn.fanOut) as one block, both from the reader's buffer. The
// subscriber still gets them byte for byte and in the order sent, with
// runs for a channel it shares with another subscriber between the
// frames for its own, and with reads that end inside a frame, some of
// them inside a run (after which the buffer moves).
func TestFanInKeepsThePublishersOrder(t *testing.T) {
	srv := brokertest.Start(t, testUsers())
	x := brokertest.Login(t, srv.Addr, "sub", "subsecret")
	x.SubscribeSync("sub", "chan", "other") // alone on chan
	y := brokertest.Login(t, srv.Addr, "sub", "subsecret")
	y.SubscribeSync("sub", "other") // other fans out to x and y
	p := brokertest.Login(t, srv.Addr, "pub", "pubsecret")

	type msg struct{ channel, payload string }
	var sent []msg
	var burst [][]byte
	for i := range 3000 {
		channel := "chan"
		if i%11 >= 8 { // runs of three
			channel = "other"
		}
		// Sizes from 20 bytes to 3 KiB, so reads end inside frames.
		payload := fmt.Sprintf("%d:%s", i, strings.Repeat(string(rune('a'+i%26)), (i*131)%3000))
		sent = append(sent, msg{channel, payload})
		burst = append(burst, brokertest.Publish(t, "pub", channel, payload))
		if i%500 == 499 || i%700 == 691 { // 691: the second of a run
			// Half a frame, then the rest once the broker has read it:
			// the reader moves the half to the front of its buffer.
			last := burst[len(burst)-1]
			burst[len(burst)-1] = last[:len(last)/2]
			p.Send(burst...)
			time.Sleep(20 * time.Millisecond)
			burst = [][]byte{last[len(last)/2:]}
		}
	}
	p.Send(burst...)

	for _, m := range sent {
		x.ExpectMessage("pub", m.channel, m.payload)
	}
	for _, m := range sent {
		if m.channel == "other" {
			y.ExpectMessage("pub", m.channel, m.payload)
		}
	}
	x.ExpectSilence()
	y.ExpectSilence()
}

// Frames a publisher's read held for a subscriber are still queued when a
// later frame of the same read ends the session: what the broker accepted
// before the refused frame is delivered, as it was when each frame was
// queued at once.
func TestFanInDeliversWhatCameBeforeARefusedFrame(t *testing.T) {
	srv := brokertest.Start(t, testUsers())
	s := brokertest.Login(t, srv.Addr, "sub", "subsecret")
	s.SubscribeSync("sub", "chan")
	p := brokertest.Login(t, srv.Addr, "pub", "pubsecret")
	var burst [][]byte
	for i := range 20 {
		burst = append(burst, brokertest.Publish(t, "pub", "chan", fmt.Sprint(i)))
	}
	p.Send(append(burst, brokertest.Publish(t, "pub", "forbidden", "refused"))...)
	for i := range 20 {
		s.ExpectMessage("pub", "chan", fmt.Sprint(i))
	}
	s.ExpectSilence()
}
