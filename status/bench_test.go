package status_test

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
	"github.com/hpfeeds-go/hpfeeds/status"
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
	// Every request computes its answer: what a computation costs.
	status.Mount(mux, srv.Broker, status.Options{CacheFor: -1, PagesPerSecond: -1})
	hs := httptest.NewServer(mux)
	defer hs.Close()
	for i := range conns {
		ident := fmt.Sprint("sensor", i%idents)
		c := brokertest.Login(b, srv.Addr, ident, "s")
		c.Send(brokertest.Subscribe(b, ident, chans[i%len(chans)]), brokertest.Publish(b, ident, "events", "hello"))
	}
	brokertest.Eventually(b, "every connection authenticated", func() bool {
		return srv.Broker.Snapshot().Owners[broker.IdentOwner{Ident: "sensor0", Owner: "sensor0"}] == conns/idents
	})
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
