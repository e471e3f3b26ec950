package metrics

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hpfeeds-go/hpfeeds/auth"
)

// Lookups times credential lookups and counts their failures per store.
// It is a prometheus.Collector.
type Lookups struct {
	duration *prometheus.HistogramVec
	failures *prometheus.CounterVec
}

// NewLookups returns lookup metrics with no store yet.
func NewLookups() *Lookups {
	return &Lookups{
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "hpfeeds_broker_auth_lookup_duration_seconds",
			Help: "Time a credential store took to answer a lookup, failed ones included",
			// From an in-memory store's microseconds to the default 5 s
			// lookup timeout of a database that is down.
			Buckets: []float64{.0001, .0005, .001, .005, .01, .05, .1, .5, 1, 5},
		}, []string{"store"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hpfeeds_broker_auth_lookup_failures_total",
			Help: "Number of credential lookups the store could not answer (error or timeout)",
		}, []string{"store"}),
	}
}

// Instrument wraps s so its lookups are measured under the label
// store=name; pass the --auth spec, redacted. The label is resolved here,
// once, not per lookup.
func (l *Lookups) Instrument(name string, s auth.Store) auth.Store {
	return &instrumented{
		Store:    s,
		duration: l.duration.WithLabelValues(name),
		failures: l.failures.WithLabelValues(name),
	}
}

// Describe implements prometheus.Collector.
func (l *Lookups) Describe(ch chan<- *prometheus.Desc) {
	l.duration.Describe(ch)
	l.failures.Describe(ch)
}

// Collect implements prometheus.Collector.
func (l *Lookups) Collect(ch chan<- prometheus.Metric) {
	l.duration.Collect(ch)
	l.failures.Collect(ch)
}

type instrumented struct {
	auth.Store
	duration prometheus.Observer
	failures prometheus.Counter
}

func (s *instrumented) Lookup(ctx context.Context, ident string) (auth.User, bool, error) {
	start := time.Now()
	u, found, err := s.Store.Lookup(ctx, ident)
	s.duration.Observe(time.Since(start).Seconds())
	if err != nil {
		s.failures.Inc()
	}
	return u, found, err
}

// LookupBatch keeps the wrapped store's batched lookups, timed as one.
func (s *instrumented) LookupBatch(ctx context.Context, idents []string) (map[string]auth.User, error) {
	b, ok := s.Store.(auth.BatchLooker)
	if !ok {
		return nil, errors.ErrUnsupported
	}
	if len(idents) == 0 {
		return b.LookupBatch(ctx, idents)
	}
	start := time.Now()
	users, err := b.LookupBatch(ctx, idents)
	s.duration.Observe(time.Since(start).Seconds())
	if err != nil {
		s.failures.Inc()
	}
	return users, err
}

// Ping keeps the wrapped store's reachability check visible to
// auth.Chain.Ping.
func (s *instrumented) Ping(ctx context.Context) error {
	if p, ok := s.Store.(auth.Pinger); ok {
		return p.Ping(ctx)
	}
	return nil
}

// DuplicateIdents keeps the wrapped store's duplicate check visible to the
// start-up warning.
func (s *instrumented) DuplicateIdents(ctx context.Context) ([]string, error) {
	if d, ok := s.Store.(auth.DuplicateFinder); ok {
		return d.DuplicateIdents(ctx)
	}
	return nil, nil
}
