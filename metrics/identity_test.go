package metrics_test

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/auth/env"
	_ "github.com/hpfeeds-go/hpfeeds/auth/sqlstore"
	"github.com/hpfeeds-go/hpfeeds/auth/storetest"
	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
)

// spellings returns n spellings of ident that a case-insensitive,
// trailing-space-ignoring comparison finds equal to it, ident excluded.
func spellings(ident string, n int) []string {
	var out []string
	for i := 1; len(out) < n; i++ {
		b := []byte(ident)
		mask, spaces := i%(1<<len(b)), i>>len(b)
		for j := range b {
			if mask&(1<<j) != 0 {
				b[j] = strings.ToUpper(string(b[j]))[0]
			}
		}
		out = append(out, string(b)+strings.Repeat(" ", spaces))
	}
	return out
}

// seriesCount counts the broker's series in a scrape (not the Go runtime's
// or the process's).
func seriesCount(sc *scrape) int {
	n := 0
	for name, f := range sc.fams {
		if !strings.HasPrefix(name, "go_") && !strings.HasPrefix(name, "process_") {
			n += len(f.Metric)
		}
	}
	return n
}

// A thousand spellings of one credential's ident add no series: each is
// refused as an unknown ident, so labels and published idents hold the
// one stored spelling. Before, the env store's Unicode upper-casing let
// 2,016 spellings of one ident log in, each adding its own series.
func TestSpellingsAddNoSeries(t *testing.T) {
	t.Run("env", func(t *testing.T) {
		t.Setenv("HPFEEDS_SENSOR_SECRET", "s3cret")
		t.Setenv("HPFEEDS_SENSOR_PUBCHANS", "events")
		t.Setenv("HPFEEDS_SENSOR_SUBCHANS", "events")
		spellingsAddNoSeries(t, env.Store{Getenv: os.Getenv}, append(spellings("sensor", 998), "ſensor", "ſenſor"))
	})
	t.Run("mariadb", func(t *testing.T) {
		srv := storetest.MariaDB
		db := srv.NewDatabase(t)
		srv.Exec(t, db, srv.LegacyDDL) // the Python broker's table: no key, a case-insensitive collation
		srv.Exec(t, db, `INSERT INTO auth_keys (identifier, secret, publish, subscribe) VALUES ('sensor', 's3cret', '["events"]', '["events"]')`)
		st, err := auth.Open(context.Background(), srv.URL(db), auth.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		spellingsAddNoSeries(t, st, spellings("sensor", 1000))
	})
}

func spellingsAddNoSeries(t *testing.T, st auth.Store, others []string) {
	e := startExported(t, st)
	// A subscriber stays, so its gauge is in every scrape.
	storetest.Login(t, e.Addr, "sensor", "s3cret", brokertest.Subscribe(t, "sensor", "events"))
	e.waitValue(t, 1, "hpfeeds_broker_subscriptions", "ident", "sensor", "chan", "events")
	if err := storetest.TryLogin(e.Addr, "sensor", "s3cret", "events"); err != nil {
		t.Fatal(err)
	}
	if err := storetest.TryLogin(e.Addr, others[0], "s3cret", "events"); err == nil {
		t.Fatalf("%q logged in", others[0])
	}
	e.waitValue(t, 1, "hpfeeds_broker_client_connections")
	before := seriesCount(e.scrape(t))
	invalid := e.Broker.Snapshot().Errors[broker.ErrorKey{Ident: "", Category: broker.CategoryInvalidIdent}]
	for _, ident := range others {
		err := storetest.TryLogin(e.Addr, ident, "s3cret", "events")
		if err == nil || err.Error() != "Authentication failed for "+ident {
			t.Fatalf("%q: %v, want refused", ident, err)
		}
	}
	if err := storetest.TryLogin(e.Addr, "sensor", "s3cret", "events"); err != nil {
		t.Fatal(err)
	}
	e.waitValue(t, 1, "hpfeeds_broker_client_connections")
	sc := e.scrape(t)
	if after := seriesCount(sc); after != before {
		t.Errorf("%d series after %d spellings, %d before:\n%s", after, len(others), before, sc.text)
	}
	if n := e.Broker.Snapshot().Errors[broker.ErrorKey{Ident: "", Category: broker.CategoryInvalidIdent}]; n != invalid+uint64(len(others)) {
		t.Errorf("invalid-ident went from %d to %d, want %d more", invalid, n, len(others))
	}
	expect(t, sc, 3, "hpfeeds_broker_connection_ready_total", "ident", "sensor")
}

// Throttled failed logins and throttled sources are exported.
func TestLoginThrottledSeries(t *testing.T) {
	e := startExported(t, testUsers(), func(c *broker.Config) {
		c.LoginThrottle = broker.ThrottleConfig{After: 1}
	})
	expect(t, e.scrape(t), 0, "hpfeeds_broker_login_throttled_total")
	for range 2 {
		if err := storetest.TryLogin(e.Addr, "pub", "wrong", "chan"); err == nil {
			t.Fatal("a wrong secret logged in")
		}
	}
	sc := e.scrape(t)
	expect(t, sc, 1, "hpfeeds_broker_login_throttled_total")
	expect(t, sc, 1, "hpfeeds_broker_login_throttled_sources")
}
