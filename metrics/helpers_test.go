package metrics_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
	"github.com/hpfeeds-go/hpfeeds/metrics"
)

func testUsers() *brokertest.Users {
	return brokertest.NewUsers(
		auth.User{Ident: "pub", Owner: "sensors", Secret: "pubsecret", PubChans: []string{"chan", "other"}},
		auth.User{Ident: "sub", Owner: "consumers", Secret: "subsecret", SubChans: []string{"chan", "other"}},
		auth.User{Ident: "both", Secret: "bothsecret", PubChans: []string{"chan"}, SubChans: []string{"chan"}},
	)
}

// brokenStore fails every lookup of the ident "broken", like a database
// that is down for that query.
type brokenStore struct{ auth.Store }

func (s brokenStore) Lookup(ctx context.Context, ident string) (auth.User, bool, error) {
	if ident == "broken" {
		return auth.User{}, false, errors.New("connection refused")
	}
	return s.Store.Lookup(ctx, ident)
}

// exported is a broker with its /metrics served as --exporter does.
type exported struct {
	*brokertest.Server
	url string
}

// startExported starts a broker whose store's lookups are measured under
// store="memory", and an HTTP server for its metrics.
func startExported(t testing.TB, store auth.Store, opts ...func(*broker.Config)) *exported {
	t.Helper()
	lookups := metrics.NewLookups()
	srv := brokertest.Start(t, lookups.Instrument("memory", store), opts...)
	hs := httptest.NewServer(metrics.Handler(metrics.NewRegistry(srv.Broker, lookups)))
	t.Cleanup(hs.Close)
	return &exported{Server: srv, url: hs.URL}
}

// scrape is one parsed GET /metrics.
type scrape struct {
	text string
	fams map[string]*dto.MetricFamily
}

func (e *exported) scrape(t testing.TB) *scrape {
	t.Helper()
	resp, err := http.Get(e.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %s\n%s", resp.Status, body)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("/metrics is not valid Prometheus text: %v\n%s", err, body)
	}
	return &scrape{text: string(body), fams: fams}
}

// metric finds the sample of family name with exactly these labels.
func (s *scrape) metric(name string, labels ...string) *dto.Metric {
	f := s.fams[name]
	if f == nil {
		return nil
	}
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
next:
	for _, m := range f.Metric {
		if len(m.Label) != len(want) {
			continue
		}
		for _, lp := range m.Label {
			if v, ok := want[lp.GetName()]; !ok || v != lp.GetValue() {
				continue next
			}
		}
		return m
	}
	return nil
}

// value is a counter's or gauge's value, or -1 when the series is absent.
func (s *scrape) value(name string, labels ...string) float64 {
	m := s.metric(name, labels...)
	switch {
	case m == nil:
		return -1
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	return -1
}

// names lists every sample name in the scrape, with a histogram's
// _bucket, _sum and _count.
func (s *scrape) names() []string {
	var out []string
	for name, f := range s.fams {
		if f.GetType() == dto.MetricType_HISTOGRAM {
			out = append(out, name+"_bucket", name+"_sum", name+"_count")
			continue
		}
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

// waitValue scrapes until the series has the value want (-1: absent).
// Counters a writer goroutine bumps after the bytes have left can trail
// what a client has already read, and closes finish after the client sees
// them.
func (e *exported) waitValue(t testing.TB, want float64, name string, labels ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := e.scrape(t).value(name, labels...)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s%v = %v, want %v", name, labels, got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
