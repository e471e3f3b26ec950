package broker

import (
	"bytes"
	"testing"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

// A publisher that holds frames for a channel's one subscriber reuses that
// subscriber for the read's next frames only while the channel's
// subscribers are unchanged: one who joins in the middle of a read gets
// the frames published after it joined.
func TestFanInSeesASubscriberJoinMidRead(t *testing.T) {
	br, err := New(Config{Auth: auth.Chain{}})
	if err != nil {
		t.Fatal(err)
	}
	pub := newConn(br, &discardConn{}, ModePubSub, "t")
	// Bytes behind each frame in the read, so the frames are held.
	pub.rd = wire.NewReader(bytes.NewReader([]byte{0, 0, 0}), wire.UniformLimits(100))
	pub.rd.Wait()
	if len(pub.rd.Pending()) == 0 {
		t.Fatal("nothing pending: frames would not be held")
	}
	first := newConn(br, &discardConn{}, ModePubSub, "t")
	joiner := newConn(br, &discardConn{}, ModePubSub, "t")
	ch := br.topic([]byte("chan"), true)
	ch.add(first)
	frame, _ := wire.AppendPublish(nil, []byte("pub"), []byte("chan"), []byte("payload"))

	ch.publish(frame, 7, pub)
	ch.publish(frame, 7, pub)
	if pub.fanIn == nil || len(pub.fanIn.frames) != 2 {
		t.Fatal("frames for the one subscriber are not held")
	}
	ch.add(joiner)
	ch.publish(frame, 7, pub)
	pub.flushFanIn()
	pub.flushFanOut()
	pub.wakeWriters()

	delivered := func(c *conn) uint64 {
		c.q.mu.Lock()
		defer c.q.mu.Unlock()
		return c.q.delivered
	}
	if n, m := delivered(first), delivered(joiner); n != 3 || m != 1 {
		t.Fatalf("queued %d frames to the first subscriber, %d to the one who joined; want 3 and 1", n, m)
	}
}
