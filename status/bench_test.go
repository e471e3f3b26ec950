package status_test

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
	"github.com/hpfeeds-go/hpfeeds/status"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

// BenchmarkStatusPages is one request to each status endpoint of a broker
// with 5,000 authenticated connections of 50 idents, each subscribed to
// one of 10 channels and having published once. /connz walks every
// connection under the broker's connection lock, so Broker.Connections is
// how long an accept can wait behind a request, at most.
func BenchmarkStatusPages(b *testing.B) {
	const conns, idents = 5000, 50
	users := brokertest.NewUsers()
	var chans []string
	for i := range 10 {
		chans = append(chans, fmt.Sprint("chan", i))
	}
	for i := range idents {
		users.Put(auth.User{Ident: fmt.Sprint("sensor", i), Secret: "s", PubChans: []string{"events"}, SubChans: chans})
	}
	srv := brokertest.Start(b, users, func(c *broker.Config) { c.Logger = slog.New(slog.DiscardHandler) })
	mux := http.NewServeMux()
	status.Mount(mux, srv.Broker, status.Options{})
	hs := httptest.NewServer(mux)
	defer hs.Close()
	for i := range conns {
		login(b, srv.Addr, fmt.Sprint("sensor", i%idents), chans[i%len(chans)])
	}
	deadline := time.Now().Add(60 * time.Second)
	for srv.Broker.Snapshot().Owners[broker.IdentOwner{Ident: "sensor0", Owner: "sensor0"}] != conns/idents ||
		len(srv.Broker.Connections()) != conns {
		if time.Now().After(deadline) {
			b.Fatal("connections never all arrived")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, path := range []string{"/connz", "/connz?sort=last&limit=10", "/chanz", "/identz", "/"} {
		b.Run(path, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				resp, err := http.Get(hs.URL + path)
				if err != nil || resp.StatusCode != http.StatusOK {
					b.Fatal(resp.Status, err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
	b.Run("Broker.Connections", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			srv.Broker.Connections()
		}
	})
}

// login authenticates as ident, subscribes to channel and publishes once,
// by hand: 5,000 clients of the client package would cost more goroutines
// than the broker under test.
func login(b *testing.B, addr, ident, channel string) {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { nc.Close() })
	info, err := wire.NewReader(nc, wire.UniformLimits(1<<10)).Next()
	if err != nil {
		b.Fatal(err)
	}
	f, _ := wire.AppendAuth(nil, info.Payload, ident, "s")
	f, _ = wire.AppendSubscribe(f, []byte(ident), []byte(channel))
	f, _ = wire.AppendPublish(f, []byte(ident), []byte("events"), []byte("hello"))
	if _, err := nc.Write(f); err != nil {
		b.Fatal(err)
	}
}
