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
	defer first.q.abort() // gives the frames' buffers back (BufsInUse)
	defer joiner.q.abort()
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
	pub.flushRead()
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

// A run for a channel with several subscribers takes the frames that
// follow it in the reader's buffer only while the channel's subscribers
// are unchanged: after a join or a leave the next frame starts afresh, and
// counts the subscribers it finds.
func TestFanOutRunEndsWhenSubscribersChange(t *testing.T) {
	br, err := New(Config{Auth: auth.Chain{}})
	if err != nil {
		t.Fatal(err)
	}
	pub := newConn(br, &discardConn{}, ModePubSub, "t")
	ch := br.topic([]byte("chan"), true)
	ch.add(newConn(br, &discardConn{}, ModePubSub, "t"))
	ch.add(newConn(br, &discardConn{}, ModePubSub, "t"))
	frame, _ := wire.AppendPublish(nil, []byte("pub"), []byte("chan"), []byte("payload"))
	buf := append(append([]byte(nil), frame...), frame...)
	first, next := buf[:len(frame)], buf[len(frame):]

	pub.startFanOut(ch, ch.gen.Load(), 2, first, 7)
	if !pub.fanOut.takes(ch, next) {
		t.Fatal("the frame right after the run is not taken")
	}
	if pub.fanOut.takes(ch, frame) {
		t.Fatal("a frame elsewhere in memory is taken")
	}
	ch.add(newConn(br, &discardConn{}, ModePubSub, "t"))
	if pub.fanOut.takes(ch, next) {
		t.Fatal("the run goes on after a subscriber joined")
	}
	pub.flushFanOut()
}

// A burst into a stalled queue alternates large batches and runs of
// small ones: the array a large batch grew is kept through small batches,
// so that the next large batch need not grow it again, and let go at the
// first small batch once none used an eighth of it for arrayKept, so that
// a queue whose burst is over pins nothing.
func TestBatchArrayKeptThroughABurstLetGoAfter(t *testing.T) {
	q := lockedQueue(t)
	const size = 4096
	// small hands back a batch of 10 frames in the kept array.
	small := func() {
		b := q.spare[:10]
		q.spare = nil
		q.doneLocked(b, nil)
	}
	q.doneLocked(make([][]byte, size), nil)
	for i := range 100 {
		small()
		if cap(q.spare) != size {
			t.Fatalf("the array was let go after %d small batches, within %v of a large one", i+1, arrayKept)
		}
	}
	q.usedAt -= int64(arrayKept) // the large batch was that long ago
	small()
	if cap(q.spare) != 0 {
		t.Fatalf("no batch used an eighth of the array for %v, and it (cap %d) is still kept", arrayKept, cap(q.spare))
	}
}
