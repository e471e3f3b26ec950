package broker_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/auth"
	_ "github.com/hpfeeds-go/hpfeeds/auth/sqlstore"
	"github.com/hpfeeds-go/hpfeeds/auth/storetest"
	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
)

// One revalidation round's lookups on PostgreSQL 10 ms away each way (a
// proxy delays every packet), for 5,000 and 50,000 idents, run as fast as
// the round allows: its bound on top of the period. The sessions are not
// opened (50,000 would pass this machine's file descriptor limit); the
// lookups and their batching, concurrency and timeouts are the broker's.
//
//	go test -run '^$' -bench BenchmarkRevalidateRound -benchtime 3x ./broker
func BenchmarkRevalidateRound(b *testing.B) {
	for _, n := range []int{5000, 50000} {
		b.Run(fmt.Sprint("idents=", n), func(b *testing.B) {
			pg := storetest.PostgreSQL
			spec, db := pg.NewUserTable(b)
			pg.Exec(b, db, fmt.Sprintf(`INSERT INTO auth_keys (identifier, secret, publish, subscribe)
				SELECT 'r' || i, 'x', '["c"]', '["c"]' FROM generate_series(1, %d) i`, n))
			proxy := storetest.NewProxy(b, pg.Addr)
			st, err := auth.Open(context.Background(), strings.Replace(spec, pg.Addr, proxy.Addr(), 1), auth.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			srv := brokertest.Start(b, auth.Chain{st}, func(c *broker.Config) { c.RevalidateEvery = time.Hour })
			idents := make([]string, n)
			for i := range idents {
				idents[i] = fmt.Sprint("r", i+1)
			}
			proxy.SetLatency(10 * time.Millisecond)
			broker.RevalidateIdents(srv.Broker, idents, 0) // the pool's connections, opened
			b.ResetTimer()
			for b.Loop() {
				if _, failed := broker.RevalidateIdents(srv.Broker, idents, 0); failed != "" {
					b.Fatalf("the lookup of %s failed", failed)
				}
			}
		})
	}
}
