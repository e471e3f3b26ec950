package metrics_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
	"github.com/hpfeeds-go/hpfeeds/metrics"
)

// BenchmarkScrapeIdents is one /metrics scrape (uncompressed text, as
// `curl /metrics` gets it) of a broker whose idents have each logged in
// once and published once on a channel of their own, with the size
// histogram's buckets and without (--publish-size-buckets=false).
// bytes/scrape is the body's size. docs/metrics.md has the numbers.
func BenchmarkScrapeIdents(b *testing.B) {
	for _, idents := range []int{1000, 10000} {
		users := make([]auth.User, idents)
		for i := range users {
			id := fmt.Sprintf("sensor-%05d", i)
			users[i] = auth.User{Ident: id, Secret: "s", PubChans: []string{id + ".events"}}
		}
		srv := brokertest.Start(b, brokertest.NewUsers(users...), quiet)
		for _, u := range users {
			c := brokertest.Login(b, srv.Addr, u.Ident, "s")
			c.Send(brokertest.Publish(b, u.Ident, u.PubChans[0], "an event of some size"))
			c.Conn.Close()
		}
		for deadline := time.Now().Add(30 * time.Second); len(srv.Broker.Snapshot().Publishes) < idents; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				b.Fatalf("%d of %d idents have published", len(srv.Broker.Snapshot().Publishes), idents)
			}
		}
		for _, buckets := range []bool{true, false} {
			b.Run(fmt.Sprintf("idents=%d/buckets=%v", idents, buckets), func(b *testing.B) {
				reg := metrics.NewRegistry(srv.Broker, nil)
				if !buckets {
					reg.Unregister(metrics.NewCollector(srv.Broker))
					reg.MustRegister(metrics.NewCollector(srv.Broker).WithoutPublishSizeBuckets())
				}
				h := metrics.Handler(reg)
				var size int
				for b.Loop() {
					w := httptest.NewRecorder()
					h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/metrics", nil))
					size = w.Body.Len()
				}
				b.ReportMetric(float64(size), "bytes/scrape")
			})
		}
	}
}
