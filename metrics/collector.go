// Package metrics exports a broker's state as Prometheus metrics: the
// Python broker's series with the same names, types, labels and help, and a
// few more an operator of a busy broker needs.
//
// Nothing is counted here. The broker keeps plain atomic counters per
// connection (and per connection and channel for publishes); the Collector
// sums them per ident when Prometheus scrapes, so a published message costs
// no label lookup whether or not an exporter runs.
package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hpfeeds-go/hpfeeds/broker"
)

// The reference's series. Its counters were declared without the _total
// suffix that prometheus_client adds on exposition; here the exposed name
// is the declared one.
var (
	descClientConnections = prometheus.NewDesc("hpfeeds_broker_client_connections",
		"Number of clients connected to broker", nil, nil)
	descConnectionMade = prometheus.NewDesc("hpfeeds_broker_connection_made_total",
		"Number of connections established", nil, nil)
	descConnectionReady = prometheus.NewDesc("hpfeeds_broker_connection_ready_total",
		"Number of connections established + authenticated", []string{"ident"}, nil)
	descConnectionError = prometheus.NewDesc("hpfeeds_broker_connection_error_total",
		"Number of connections that experienced a protocol error", []string{"ident", "category"}, nil)
	descConnectionLost = prometheus.NewDesc("hpfeeds_broker_connection_lost_total",
		"Number of connections lost", []string{"ident"}, nil)
	descSendBufferSize = prometheus.NewDesc("hpfeeds_broker_connection_send_buffer_size",
		"Number of bytes queued for transmission", []string{"ident"}, nil)
	descReceiveBufferSize = prometheus.NewDesc("hpfeeds_broker_connection_receive_buffer_size",
		"Number of bytes received but not yet parsed", []string{"ident"}, nil)
	descReceiveBufferFill = prometheus.NewDesc("hpfeeds_broker_connection_receive_buffer_fill_total",
		"Number of bytes queued in the parsing buffer", []string{"ident"}, nil)
	descSendBufferFill = prometheus.NewDesc("hpfeeds_broker_connection_send_buffer_fill_total",
		"Number of bytes queued in the send buffer", []string{"ident"}, nil)
	descSendBufferDrain = prometheus.NewDesc("hpfeeds_broker_connection_send_buffer_drain_total",
		"Number of bytes drained from the send buffer and sent", []string{"ident"}, nil)
	descDeadlineStart = prometheus.NewDesc("hpfeeds_broker_connection_send_buffer_deadline_start_total",
		"High watermark was exceeded and this connection was put on a deadline timer", []string{"ident"}, nil)
	descDeadlineRecover = prometheus.NewDesc("hpfeeds_broker_connection_send_buffer_deadline_recover_total",
		"Buffer recovered to low watermark or better and deadline timer was cancelled", []string{"ident"}, nil)
	descSubscriptions = prometheus.NewDesc("hpfeeds_broker_subscriptions",
		"Number of subscriptions to a channel", []string{"ident", "chan"}, nil)
	descPublishCount = prometheus.NewDesc("hpfeeds_broker_receive_publish_count_total",
		"Number of events received by broker for a channel", []string{"ident", "chan"}, nil)
	descPublishSize = prometheus.NewDesc("hpfeeds_broker_receive_publish_size",
		"Sizes of messages received by broker for a channel", []string{"ident", "chan"}, nil)
	descAuthenticated = prometheus.NewDesc("hpfeeds_client_authenticated_connections",
		"Authenticated connections", []string{"ident", "owner"}, nil)
)

// Series the reference does not have.
var (
	descDelivered = prometheus.NewDesc("hpfeeds_broker_messages_delivered_total",
		"Number of published messages queued for sending to subscribers (one per subscriber and message)", []string{"ident"}, nil)
	descFramesWritten = prometheus.NewDesc("hpfeeds_broker_frames_written_total",
		"Number of frames written whole to connections", []string{"ident"}, nil)
	descWrites = prometheus.NewDesc("hpfeeds_broker_writes_total",
		"Number of write calls to connections; each carries one or more frames", []string{"ident"}, nil)
	descBackpressureCloses = prometheus.NewDesc("hpfeeds_broker_backpressure_closes_total",
		"Number of subscribers closed for being too slow: past the soft mark for longer than the deadline (reason=deadline), at the hard bound (reason=hard-bound), or holding the most queued bytes while the broker was over its memory budget (reason=memory-budget)",
		[]string{"ident", "reason"}, nil)
	descMemoryUsed = prometheus.NewDesc("hpfeeds_broker_memory_budget_used_bytes",
		"Bytes in the memory budget: every send queue and every reader buffer larger than an idle connection's", nil, nil)
	descMemoryLimit = prometheus.NewDesc("hpfeeds_broker_memory_budget_bytes",
		"The memory budget (0: none)", nil, nil)
	descFrameBuffers = prometheus.NewDesc("hpfeeds_broker_frame_buffers_bytes",
		"Bytes of frame buffers mapped outside the Go heap (so not in go_memstats): holding queued frames (state=in-use), or free for reuse until unused for 2 s (state=free)",
		[]string{"state"}, nil)
	descPublisherPauses = prometheus.NewDesc("hpfeeds_broker_publisher_pauses_total",
		"Number of times a connection's next read was held back: for subscribers past their stall mark (reason=flow-control, 5 ms at most), or because memory was tight (reason=memory)",
		[]string{"ident", "reason"}, nil)
	descPartialCloses = prometheus.NewDesc("hpfeeds_broker_partial_frame_closes_total",
		"Number of connections closed while receiving a frame: not completed within the frame timeout (reason=frame-timeout), or holding the largest partial frame while the broker was over its memory budget (reason=memory-budget)",
		[]string{"reason"}, nil)
	descIdentLastPublish = prometheus.NewDesc("hpfeeds_broker_ident_last_publish_timestamp_seconds",
		"Unix time of the ident's last publish to any channel, to a quarter second; for alerts on sensors that went quiet",
		[]string{"ident"}, nil)
	descLoginThrottled = prometheus.NewDesc("hpfeeds_broker_login_throttled_total",
		"Number of logins that waited their turn to be checked because their source (an IPv4 address or IPv6 /64) had failed too many logins in a row",
		nil, nil)
	descLoginThrottledSources = prometheus.NewDesc("hpfeeds_broker_login_throttled_sources",
		"Number of sources whose logins are checked one at a time now", nil, nil)
	descConnectionsRefused = prometheus.NewDesc("hpfeeds_broker_connections_refused_total",
		"Number of connections closed at accept because the broker (reason=max-connections) or their source address (reason=max-connections-per-ip) had as many open as allowed",
		[]string{"reason"}, nil)
	descPublishesUndelivered = prometheus.NewDesc("hpfeeds_broker_publishes_undelivered_total",
		"Number of messages published on this broker to the channel that reached no subscriber (with a cluster: on no broker); a rise means the channel's consumer, a logger say, is gone",
		[]string{"chan"}, nil)
)

var publishBuckets = func() []float64 {
	b := make([]float64, len(broker.PublishSizeBuckets))
	for i, v := range broker.PublishSizeBuckets {
		b[i] = float64(v)
	}
	return b
}()

// Collector exports one broker's series. Register it with a
// prometheus.Registry (NewRegistry does).
type Collector struct {
	b *broker.Broker

	mu sync.Mutex
	// Subscription pairs seen at any scrape: like the reference's gauge,
	// a pair stays exported at 0 once its subscribers are gone. Bounded by
	// the users' configured subchans.
	seenSubs map[broker.IdentChan]struct{}
	// noSizeBuckets drops the per-bucket series of the size histogram.
	noSizeBuckets bool
}

// NewCollector returns a collector of b's series.
func NewCollector(b *broker.Broker) *Collector {
	return &Collector{b: b, seenSubs: map[broker.IdentChan]struct{}{}}
}

// WithoutPublishSizeBuckets makes c export hpfeeds_broker_receive_publish_size
// with its _sum, _count and le="+Inf" bucket only: 3 series per ident and
// channel instead of 16, the bulk of a scrape with many idents
// (docs/metrics.md). Averages (rate of _sum over rate of _count) still
// work; quantiles do not. It returns c.
func (c *Collector) WithoutPublishSizeBuckets() *Collector {
	c.noSizeBuckets = true
	return c
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		descClientConnections, descConnectionMade, descConnectionReady, descConnectionError,
		descConnectionLost, descSendBufferSize, descReceiveBufferSize, descReceiveBufferFill,
		descSendBufferFill, descSendBufferDrain, descDeadlineStart, descDeadlineRecover,
		descSubscriptions, descPublishCount, descPublishSize, descAuthenticated,
		descDelivered, descFramesWritten, descWrites, descBackpressureCloses, descConnectionsRefused,
		descIdentLastPublish, descLoginThrottled, descLoginThrottledSources,
		descMemoryUsed, descMemoryLimit, descFrameBuffers, descPublisherPauses, descPartialCloses,
		descPublishesUndelivered,
	} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.b.Snapshot()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}

	gauge(descClientConnections, float64(s.Connections))
	counter(descConnectionMade, s.Made)
	for reason, n := range s.Refused {
		counter(descConnectionsRefused, n, reason)
	}
	counter(descLoginThrottled, s.Throttle.Delayed)
	gauge(descLoginThrottledSources, float64(s.Throttle.Sources))
	for id, n := range s.Ready {
		counter(descConnectionReady, n, id)
	}
	for id, n := range s.Lost {
		counter(descConnectionLost, n, id)
	}
	for k, n := range s.Errors {
		counter(descConnectionError, n, k.Ident, k.Category)
	}

	for id, st := range s.Idents {
		// As in the reference, buffer sizes are exported only for idents
		// with a connection open.
		if st.Connections > 0 {
			gauge(descSendBufferSize, float64(st.SendBufferSize), id)
			gauge(descReceiveBufferSize, float64(st.ReceiveBufferSize), id)
		}
		counter(descReceiveBufferFill, st.ReceiveBufferFill, id)
		counter(descSendBufferFill, st.SendBufferFill, id)
		counter(descSendBufferDrain, st.SendBufferDrain, id)
		counter(descDeadlineStart, st.DeadlineStarts, id)
		counter(descDeadlineRecover, st.DeadlineRecovers, id)
		counter(descDelivered, st.Delivered, id)
		counter(descFramesWritten, st.FramesWritten, id)
		counter(descWrites, st.Writes, id)
		// Every authenticated ident, both reasons: a dashboard's increase()
		// shows 0 rather than no data. Only authenticated connections
		// subscribe, so no close is left out.
		for _, r := range []string{broker.BackpressureDeadline, broker.BackpressureHardBound, broker.BackpressureMemoryBudget} {
			counter(descBackpressureCloses, s.Backpressure[broker.BackpressureKey{Ident: id, Reason: r}], id, r)
		}
	}
	for k, n := range s.Owners {
		gauge(descAuthenticated, float64(n), k.Ident, k.Owner)
	}

	c.mu.Lock()
	for k := range s.Subscriptions {
		c.seenSubs[k] = struct{}{}
	}
	for k := range c.seenSubs {
		gauge(descSubscriptions, float64(s.Subscriptions[k]), k.Ident, k.Chan)
	}
	c.mu.Unlock()

	collectPublishes(ch, s, !c.noSizeBuckets)
	collectFlow(s, gauge, counter)
	for channel, n := range s.Undelivered {
		counter(descPublishesUndelivered, n, channel)
	}
}

// collectFlow exports the memory budget and what flow control did.
func collectFlow(s *broker.Snapshot, gauge func(*prometheus.Desc, float64, ...string), counter func(*prometheus.Desc, uint64, ...string)) {
	gauge(descMemoryUsed, float64(s.MemoryUsed))
	gauge(descMemoryLimit, float64(s.MemoryLimit))
	gauge(descFrameBuffers, float64(s.FrameBuffersInUse), "in-use")
	gauge(descFrameBuffers, float64(s.FrameBuffersFree), "free")
	counter(descPartialCloses, s.FrameTimeouts, "frame-timeout")
	counter(descPartialCloses, s.PartialCloses, "memory-budget")
	for id, st := range s.Idents {
		counter(descPublisherPauses, st.FlowPauses, id, "flow-control")
		counter(descPublisherPauses, st.MemoryPauses, id, "memory")
	}
}

// collectPublishes exports what each ident published: per channel, and the
// time of its last publish anywhere; the size histogram's buckets only
// with withBuckets.
func collectPublishes(ch chan<- prometheus.Metric, s *broker.Snapshot, withBuckets bool) {
	last := map[string]int64{}
	for k, p := range s.Publishes {
		last[k.Ident] = max(last[k.Ident], p.Last)
		// The histogram keeps the map until it is written: one each.
		var buckets map[float64]uint64
		if withBuckets {
			buckets = make(map[float64]uint64, len(publishBuckets))
			var cum uint64
			for i, le := range publishBuckets {
				cum += p.Buckets[i]
				buckets[le] = cum
			}
		}
		count := p.Count()
		ch <- prometheus.MustNewConstMetric(descPublishCount, prometheus.CounterValue, float64(count), k.Ident, k.Chan)
		ch <- prometheus.MustNewConstHistogram(descPublishSize, count, float64(p.Sum), buckets, k.Ident, k.Chan)
	}
	for id, ns := range last {
		if ns != 0 {
			ch <- prometheus.MustNewConstMetric(descIdentLastPublish, prometheus.GaugeValue, float64(ns)/1e9, id)
		}
	}
}
