package broker

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

// A publisher writing to its one subscriber itself (flushInline) leaves to
// the writer goroutine what the socket would not take, a frame cut in the
// middle included: the subscriber still gets every byte, in order, and
// the budget returns to zero. The subscriber does not read until the
// socket is full, so inline writes are cut short.
func TestInlineFlushLeavesTheRestInOrder(t *testing.T) {
	if !inlineFlush {
		t.Skip("no inline flush on this OS: every write goes through the writer goroutine")
	}
	// 9 MB queued while nobody reads: past the stall mark, for longer
	// than the stall timeout would allow.
	br, err := New(Config{Auth: auth.Chain{}, StallTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	client, server := tcpPair(t)
	client.(*net.TCPConn).SetReadBuffer(128 << 10) // at least loopback's MSS, or the window crawls
	server.(*net.TCPConn).SetWriteBuffer(4 << 10)
	sub := newConn(br, server, ModePubSub, "t")
	q := &sub.q
	if q.raw == nil {
		t.Fatal("a plain TCP subscriber has no raw socket for inline writes")
	}
	pub := newConn(br, &discardConn{}, ModePubSub, "t")

	var want bytes.Buffer
	inline := 0
	for i := range 3000 {
		// Sizes from 9 bytes to 6 KiB: small frames copied side by side
		// into chunks, larger ones held alone, and every third shared.
		raw := bytes.Repeat([]byte{byte(i)}, 9+(i*37)%(6<<10))
		binary.BigEndian.PutUint32(raw, uint32(i))
		want.Write(raw)
		if i%3 == 0 {
			f, sh := br.mem.share(raw)
			q.push(f, len(f), sh, pub)
			br.mem.unshare(f, sh, 1)
		} else {
			q.push(raw, len(raw), nil, pub)
		}
		if i%7 != 6 {
			continue // several frames per read
		}
		// What wakeWriters does, counting the inline flushes.
		if len(pub.later) == 1 && q.flushInline(pub.later[0].start) {
			inline++
			pub.later = pub.later[:0]
		}
		pub.wakeWriters()
	}
	pub.wakeWriters()
	// The socket is full and nobody reads: what inline flushes could not
	// write went to the writer goroutine, which is blocked writing it.
	time.Sleep(100 * time.Millisecond)
	q.mu.Lock()
	handedOver := q.writing && q.queued > 0
	q.mu.Unlock()
	if inline == 0 || !handedOver {
		t.Fatalf("inline flushes %d, rest handed to the writer %v: the test missed a path", inline, handedOver)
	}

	got := make([]byte, want.Len())
	client.SetReadDeadline(time.Now().Add(30 * time.Second))
	if n, err := io.ReadFull(client, got); err != nil {
		q.mu.Lock()
		t.Logf("queued %d frames %d writing %v running %v awake %v carry %d closing %v dropped %v", q.queued, len(q.frames), q.writing, q.running, q.awake, len(q.carry), q.closing, q.dropped.Load())
		q.mu.Unlock()
		t.Fatalf("read %d of %d: %v", n, len(got), err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		i := 0
		for i < len(got) && got[i] == want.Bytes()[i] {
			i++
		}
		t.Fatalf("the stream differs from byte %d of %d", i, len(got))
	}
	deadline := time.Now().Add(5 * time.Second)
	for br.mem.used.Load() != 0 || q.queuedBytes() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("budget %d, queued %d after everything was read", br.mem.used.Load(), q.queuedBytes())
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("%d inline flushes", inline)
}

// Frames of two publishers in one queue are left to the writer goroutine,
// which gathers them into fewer writes.
func TestInlineFlushLeavesMixedQueuesToTheWriter(t *testing.T) {
	br, err := New(Config{Auth: auth.Chain{}})
	if err != nil {
		t.Fatal(err)
	}
	sub := newConn(br, &discardConn{}, ModePubSub, "t")
	a := newConn(br, &discardConn{}, ModePubSub, "a")
	b := newConn(br, &discardConn{}, ModePubSub, "b")
	sub.q.raw = nil     // a discardConn has no socket: only the choice is tested
	defer sub.q.abort() // gives the frames' buffers back (BufsInUse)
	sub.q.push([]byte("from a"), 6, nil, a)
	sub.q.push([]byte("from b"), 6, nil, b)
	sub.q.mu.Lock()
	mixed := sub.q.mixed
	sub.q.mu.Unlock()
	if !mixed {
		t.Fatal("a queue holding two publishers' frames is not marked mixed")
	}
}

// A read of a few frames for several subscribers is written to them by the
// publisher: no writer goroutine starts, and each socket gets the frames.
func TestInlineFlushFansOutASmallRead(t *testing.T) {
	if !inlineFlush {
		t.Skip("no inline flush on this OS: every write goes through the writer goroutine")
	}
	br, err := New(Config{Auth: auth.Chain{}})
	if err != nil {
		t.Fatal(err)
	}
	ch := br.topic([]byte("chan"), true)
	var subs []*conn
	var clients []net.Conn
	for range 3 {
		client, server := tcpPair(t)
		s := newConn(br, server, ModePubSub, "t")
		defer func() { s.q.abort(); <-s.q.done }()
		ch.add(s)
		subs, clients = append(subs, s), append(clients, client)
	}
	pub := newConn(br, &discardConn{}, ModePubSub, "t")
	pub.sess.Store(newSession(auth.User{Ident: "pub", PubChans: []string{"chan"}}))

	var want []byte
	for i := range 3 {
		raw, _ := wire.AppendPublish(nil, []byte("pub"), []byte("chan"), []byte{'a' + byte(i)})
		f, _ := wire.Decode(wire.OpPublish, raw)
		pub.publish(&f)
		want = append(want, raw...)
	}
	pub.wakeWriters()
	for i, s := range subs {
		s.q.mu.Lock()
		running := s.q.running
		s.q.mu.Unlock()
		if running {
			t.Errorf("subscriber %d: a writer goroutine was started for a small read", i)
		}
		got := make([]byte, len(want))
		clients[i].SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(clients[i], got); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("subscriber %d got %x, %v; want %x", i, got, err, want)
		}
	}
}

// tcpPair returns both ends of a loopback TCP connection, the client's
// closed when the test ends.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return client, server
}
