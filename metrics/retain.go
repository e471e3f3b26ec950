package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/hpfeeds-go/hpfeeds/broker"
)

var (
	descRetainedMessages = prometheus.NewDesc("hpfeeds_broker_retained_messages",
		"Messages a retained channel holds in the store", []string{"channel"}, nil)
	descRetainedBytes = prometheus.NewDesc("hpfeeds_broker_retained_bytes",
		"Bytes of PUBLISH frames a retained channel holds in the store, before compression", []string{"channel"}, nil)
	descRetainedOldest = prometheus.NewDesc("hpfeeds_broker_retained_oldest_age_seconds",
		"Age of a retained channel's oldest stored message", []string{"channel"}, nil)
	descRetainBehind = prometheus.NewDesc("hpfeeds_broker_retain_behind_messages",
		"Messages of a retained channel an ident has not been sent yet (catching up, or away; 0 while waiting for the store, not known)", []string{"ident", "channel", "state"}, nil)
	descRetainBehindSeconds = prometheus.NewDesc("hpfeeds_broker_retain_behind_seconds",
		"Age of the oldest message of a retained channel an ident has not been sent yet", []string{"ident", "channel", "state"}, nil)
	descRetainFailed = prometheus.NewDesc("hpfeeds_broker_retain_store_failures_total",
		"Batches of retained messages the store refused (live delivery went on)", nil, nil)
	descRetainRestarts = prometheus.NewDesc("hpfeeds_broker_retain_store_restarts_total",
		"Restarts of the embedded JetStream after a write error (a full disk) had stopped it storing", nil, nil)
	descRetainReplayed = prometheus.NewDesc("hpfeeds_broker_retain_replayed_messages_total",
		"Retained messages sent from the store to catching-up subscribers", nil, nil)
	descRetainCatching = prometheus.NewDesc("hpfeeds_broker_retain_catching_up",
		"Subscriptions catching up from the store now", nil, nil)
	descRetainStore = prometheus.NewDesc("hpfeeds_broker_retain_jetstream_bytes",
		"JetStream's use for retained channels, by storage (memory, file), compressed", []string{"storage"}, nil)
)

// RetainCollector exports the retained store, read at each scrape.
type RetainCollector struct{ b *broker.Broker }

// NewRetainCollector returns a collector of b's retention.
func NewRetainCollector(b *broker.Broker) *RetainCollector { return &RetainCollector{b} }

// Describe implements prometheus.Collector.
func (c *RetainCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRetainedMessages, descRetainedBytes,
		descRetainedOldest, descRetainBehind, descRetainBehindSeconds, descRetainFailed,
		descRetainRestarts, descRetainReplayed, descRetainCatching, descRetainStore} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *RetainCollector) Collect(ch chan<- prometheus.Metric) {
	m := func(d *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, t, v, labels...)
	}
	retained := false
	for _, ci := range c.b.Channels() {
		if r := ci.Retained; r != nil {
			retained = true
			m(descRetainedMessages, prometheus.GaugeValue, float64(r.Messages), ci.Name)
			m(descRetainedBytes, prometheus.GaugeValue, float64(r.Bytes), ci.Name)
			m(descRetainedOldest, prometheus.GaugeValue, r.OldestAgeSeconds, ci.Name)
		}
	}
	if retained {
		for ident, lags := range c.b.RetainLags() {
			for _, l := range lags {
				m(descRetainBehind, prometheus.GaugeValue, float64(l.BehindMessages), ident, l.Channel, l.State)
				m(descRetainBehindSeconds, prometheus.GaugeValue, l.BehindSeconds, ident, l.Channel, l.State)
			}
		}
	}
	// Exported without --retain too (zero), so dashboards never lack them.
	u := c.b.RetainUsage()
	m(descRetainFailed, prometheus.CounterValue, float64(u.Failed))
	m(descRetainRestarts, prometheus.CounterValue, float64(u.Restarts))
	m(descRetainReplayed, prometheus.CounterValue, float64(u.Replayed))
	m(descRetainCatching, prometheus.GaugeValue, float64(c.b.CatchingUp()))
	m(descRetainStore, prometheus.GaugeValue, float64(u.Memory), "memory")
	m(descRetainStore, prometheus.GaugeValue, float64(u.Store), "file")
}
