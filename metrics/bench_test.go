package metrics_test

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
	"github.com/hpfeeds-go/hpfeeds/metrics"
	"github.com/hpfeeds-go/hpfeeds/status"
)

// BenchmarkPublishExporter publishes through a real broker on loopback to
// subscribers: with no exporter; with the collector registered and scraped
// over HTTP every 10 ms (far more often than any Prometheus); and with, in
// the same 10 ms, the status pages requested too (/connz, /chanz, /identz
// and /, far more often than any person or script). The broker counts the
// same way in all; the difference is what requests cost. allocs/op counts
// every goroutine of the process: broker, clients and scraper.
func BenchmarkPublishExporter(b *testing.B) {
	const subscribers = 10
	for _, exporter := range []string{"none", "metrics", "metrics+status"} {
		paths := map[string][]string{
			"metrics":        {"/metrics"},
			"metrics+status": {"/metrics", "/connz", "/chanz", "/identz", "/"},
		}[exporter]
		b.Run("exporter="+exporter, func(b *testing.B) {
			srv := brokertest.Start(b, testUsers(), quiet)
			stop := make(chan struct{})
			var scrapes sync.WaitGroup
			nscrapes := 0
			if paths != nil {
				mux := metrics.Handler(metrics.NewRegistry(srv.Broker, nil))
				// Each request computed anew and none refused, as before caching.
				status.Mount(mux, srv.Broker, status.Options{CacheFor: -1, PagesPerSecond: -1})
				hs := httptest.NewServer(mux)
				defer hs.Close()
				scrapes.Add(1)
				go func() {
					defer scrapes.Done()
					t := time.NewTicker(10 * time.Millisecond)
					defer t.Stop()
					for {
						select {
						case <-stop:
							return
						case <-t.C:
						}
						for _, path := range paths {
							resp, err := http.Get(hs.URL + path)
							if err != nil {
								b.Error(err)
								return
							}
							io.Copy(io.Discard, resp.Body)
							resp.Body.Close()
						}
						nscrapes++
					}
				}()
			}

			var readers sync.WaitGroup
			for range subscribers {
				s := brokertest.Dial(b, srv.Addr)
				s.Send(s.Auth("sub", "subsecret"), brokertest.Subscribe(b, "sub", "chan"))
				readers.Add(1)
				go func() {
					defer readers.Done()
					for i := 0; i < b.N; i++ {
						s.Conn.SetReadDeadline(time.Now().Add(30 * time.Second))
						if _, err := s.R.Next(); err != nil {
							b.Errorf("subscriber: %v after %d of %d", err, i, b.N)
							return
						}
					}
				}()
			}
			p := brokertest.Dial(b, srv.Addr)
			p.Send(p.Auth("pub", "pubsecret"))
			waitSubscribers(b, srv, subscribers)

			frame := brokertest.Publish(b, "pub", "chan", string(make([]byte, 256)))
			batch := bytes.Repeat(frame, 100)
			b.SetBytes(int64(len(frame)))
			b.ReportAllocs()
			b.ResetTimer()
			for sent := 0; sent < b.N; {
				n := min(100, b.N-sent)
				p.Send(batch[:n*len(frame)])
				sent += n
			}
			readers.Wait()
			b.StopTimer()
			close(stop)
			scrapes.Wait()
			b.ReportMetric(float64(b.N*subscribers)/b.Elapsed().Seconds(), "deliveries/s")
			if paths != nil {
				b.ReportMetric(float64(nscrapes), "scrapes")
			}
		})
	}
}

func waitSubscribers(b *testing.B, srv *brokertest.Server, n int) {
	deadline := time.Now().Add(10 * time.Second)
	for srv.Broker.Snapshot().Subscriptions[broker.IdentChan{Ident: "sub", Chan: "chan"}] != n {
		if time.Now().After(deadline) {
			b.Fatal("subscribers never subscribed")
		}
		time.Sleep(time.Millisecond)
	}
}

// BenchmarkScrape is one GET /metrics of a broker with 1000 authenticated
// connections (10 idents, each subscribed to one of 2 channels): the
// collector walks every connection and subscription under the broker's
// connection lock, so this is how long accepts wait during a scrape, at
// most.
func BenchmarkScrape(b *testing.B) {
	users := testUsers()
	for i := range 10 {
		users.Put(auth.User{Ident: fmt.Sprint("sensor", i), Secret: "s", SubChans: []string{"chan", "other"}})
	}
	srv := brokertest.Start(b, users, quiet)
	hs := httptest.NewServer(metrics.Handler(metrics.NewRegistry(srv.Broker, nil)))
	defer hs.Close()
	const conns = 1000
	for i := range conns {
		c := brokertest.Dial(b, srv.Addr)
		ident := fmt.Sprint("sensor", i%10)
		c.Send(c.Auth(ident, "s"), brokertest.Subscribe(b, ident, []string{"chan", "other"}[i%2]))
	}
	deadline := time.Now().Add(30 * time.Second)
	for srv.Broker.Snapshot().Connections != conns {
		if time.Now().After(deadline) {
			b.Fatal("connections never all arrived")
		}
		time.Sleep(time.Millisecond)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		resp, err := http.Get(hs.URL + "/metrics")
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	b.StopTimer()
	start := time.Now()
	for i := 0; i < 100; i++ {
		srv.Broker.Snapshot()
	}
	b.ReportMetric(float64(time.Since(start).Microseconds())/100, "µs/snapshot")
}

// quiet keeps the login and disconnect lines out of benchmark output.
func quiet(c *broker.Config) { c.Logger = slog.New(slog.DiscardHandler) }
