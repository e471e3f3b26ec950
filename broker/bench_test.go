package broker

import (
	"bytes"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

// discardConn is a socket whose peer reads instantly.
type discardConn struct {
	net.Conn // nil: only the methods below are used
	written  atomic.Int64
}

func (d *discardConn) Write(p []byte) (int, error)      { d.written.Add(int64(len(p))); return len(p), nil }
func (d *discardConn) Close() error                     { return nil }
func (d *discardConn) SetWriteDeadline(time.Time) error { return nil }
func (d *discardConn) SetReadDeadline(time.Time) error  { return nil }
func (d *discardConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }

// benchConns makes a broker with a publisher and n subscribers of "chan"
// whose writers drain into discardConns.
func benchConns(b *testing.B, n int) (*Broker, *conn, []*discardConn) {
	br, err := New(Config{Auth: auth.Chain{}})
	if err != nil {
		b.Fatal(err)
	}
	u := auth.User{Ident: "ident", PubChans: []string{"chan"}, SubChans: []string{"chan"}}
	mk := func() (*conn, *discardConn) {
		d := &discardConn{}
		c := newConn(br, d, ModePubSub, "bench")
		c.sess.Store(newSession(u))
		return c, d
	}
	pub, _ := mk()
	var ds []*discardConn
	for i := 0; i < n; i++ {
		c, d := mk()
		b.Cleanup(func() { c.q.abort(); <-c.q.done })
		sf, _ := wire.AppendSubscribe(nil, []byte("ident"), []byte("chan"))
		f, _ := wire.Decode(wire.OpSubscribe, sf)
		c.subscribe(&f)
		ds = append(ds, d)
	}
	return br, pub, ds
}

// BenchmarkPublish measures the publish path from a decoded frame to every
// subscriber's socket: one copy of the frame per publish, and no allocation
// per delivery whatever the number of subscribers.
func BenchmarkPublish(b *testing.B) {
	for _, n := range []int{0, 1, 10, 50} {
		for _, size := range []int{256, 1024} {
			b.Run(fmt.Sprintf("subs=%d/payload=%d", n, size), func(b *testing.B) {
				_, pub, ds := benchConns(b, n)
				raw, _ := wire.AppendPublish(nil, []byte("ident"), []byte("chan"), make([]byte, size))
				f, _ := wire.Decode(wire.OpPublish, raw)
				b.SetBytes(int64(len(raw) * n))
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					pub.publish(&f)
					pub.wakeWriters() // as if each read returned one frame
				}
				// Wait for the writers so the time includes the writes.
				want := int64(len(raw)) * int64(b.N)
				for _, d := range ds {
					for d.written.Load() < want {
						time.Sleep(time.Millisecond)
					}
				}
				b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "deliveries/s")
			})
		}
	}
}

// BenchmarkPush is the per-delivery cost alone: queueing a shared frame.
func BenchmarkPush(b *testing.B) {
	_, _, _ = benchConns(b, 0)
	// Pushing outruns the writer here: no stall timeout closes it.
	br, err := New(Config{Auth: auth.Chain{}, StallTimeout: -1})
	if err != nil {
		b.Fatal(err)
	}
	d := &discardConn{}
	c := newConn(br, d, ModePubSub, "bench")
	defer func() { c.q.abort(); <-c.q.done }()
	raw, _ := wire.AppendPublish(nil, []byte("ident"), []byte("chan"), make([]byte, 256))
	frame, sh := br.mem.share(raw)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c.q.push(frame, 256, sh, nil)
	}
	br.mem.unshare(frame, sh, b.N)
}

// repeatReader is a stream of the same burst over and over, read at most
// a burst at a time, as a sensor that keeps sending it.
type repeatReader struct {
	data []byte
	off  int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	n := copy(p, r.data[r.off:])
	r.off = (r.off + n) % len(r.data)
	return n, nil
}

// BenchmarkPublishRead measures reads of 64 PUBLISH frames each, as a busy
// sensor's reads bring them, to n subscribers, through the read loop's
// steps: a read's run of frames for the channel is queued as one block
// (conn.fanOut), or, to one subscriber, together (conn.fanIn).
func BenchmarkPublishRead(b *testing.B) {
	const perRead = 64
	for _, n := range []int{1, 10, 50} {
		b.Run(fmt.Sprintf("subs=%d/payload=256", n), func(b *testing.B) {
			_, pub, ds := benchConns(b, n)
			raw, _ := wire.AppendPublish(nil, []byte("ident"), []byte("chan"), make([]byte, 256))
			pub.rd = wire.NewReader(&repeatReader{data: bytes.Repeat(raw, perRead)}, wire.UniformLimits(1<<20))
			b.SetBytes(int64(len(raw) * perRead * n))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N*perRead; i++ {
				if !pub.rd.Ready() { // as readLoop and beforeRead do
					pub.flushRead()
					pub.wakeWriters()
					if err := pub.rd.Wait(); err != nil {
						b.Fatal(err)
					}
				}
				if ok, _, err := pub.handleNext(); !ok {
					b.Fatal(err)
				}
			}
			pub.flushRead()
			pub.wakeWriters()
			want := int64(len(raw)) * int64(b.N*perRead)
			for _, d := range ds {
				for d.written.Load() < want {
					time.Sleep(time.Millisecond)
				}
			}
			b.ReportMetric(float64(b.N*perRead*n)/b.Elapsed().Seconds(), "deliveries/s")
		})
	}
}
