package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/hpfeeds-go/hpfeeds/cluster"
)

var (
	descClusterForwarded = prometheus.NewDesc("hpfeeds_broker_cluster_messages_forwarded_total",
		"Messages published on this broker and forwarded to the cluster", nil, nil)
	descClusterForwardFailed = prometheus.NewDesc("hpfeeds_broker_cluster_messages_forward_failed_total",
		"Messages published on this broker that could not be forwarded to the cluster (NATS unreachable, or the message is over its max_payload)", nil, nil)
	descClusterForwardDropped = prometheus.NewDesc("hpfeeds_broker_cluster_messages_forward_dropped_total",
		"Messages published on this broker that were not forwarded to the cluster because NATS was not keeping up (the forwarding queue was full)", nil, nil)
	descClusterReceived = prometheus.NewDesc("hpfeeds_broker_cluster_messages_received_total",
		"Messages received from the cluster and delivered to local subscribers", nil, nil)
	descClusterRejected = prometheus.NewDesc("hpfeeds_broker_cluster_messages_rejected_total",
		"Messages received from the cluster that were not well-formed PUBLISH frames", nil, nil)
	descClusterConnected = prometheus.NewDesc("hpfeeds_broker_cluster_connected",
		"1 while connected to NATS, 0 otherwise", nil, nil)
)

// ClusterCollector exports the counts of a cluster bridge, read from stats
// (cluster.Bridge.Stats) at each scrape.
type ClusterCollector struct {
	stats func() cluster.Stats
}

// NewClusterCollector returns a collector of stats' counts.
func NewClusterCollector(stats func() cluster.Stats) *ClusterCollector {
	return &ClusterCollector{stats: stats}
}

// Describe implements prometheus.Collector.
func (c *ClusterCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descClusterForwarded, descClusterForwardFailed,
		descClusterForwardDropped, descClusterReceived, descClusterRejected, descClusterConnected} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *ClusterCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	counter := func(d *prometheus.Desc, v uint64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	counter(descClusterForwarded, s.Forwarded)
	counter(descClusterForwardFailed, s.ForwardFailed)
	counter(descClusterForwardDropped, s.ForwardDropped)
	counter(descClusterReceived, s.Received)
	counter(descClusterRejected, s.Rejected)
	connected := 0.0
	if s.Connected {
		connected = 1
	}
	ch <- prometheus.MustNewConstMetric(descClusterConnected, prometheus.GaugeValue, connected)
}
