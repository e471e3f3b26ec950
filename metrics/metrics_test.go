package metrics_test

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
)

// expect checks that a series has exactly the value want (-1: absent).
func expect(t *testing.T, sc *scrape, want float64, name string, labels ...string) {
	t.Helper()
	if got := sc.value(name, labels...); got != want {
		t.Errorf("%s%v = %v, want %v", name, labels, got, want)
	}
}

// The reference's series after real traffic, then after everyone leaves.
func TestSeriesAfterTraffic(t *testing.T) {
	e := startExported(t, testUsers())
	expect(t, e.scrape(t), 0, "hpfeeds_broker_client_connections")

	var subs []*brokertest.Client
	for range 2 {
		s := brokertest.Dial(t, e.Addr)
		s.Send(s.Auth("sub", "subsecret"), brokertest.Subscribe(t, "sub", "chan"))
		subs = append(subs, s)
	}
	e.waitValue(t, 2, "hpfeeds_broker_subscriptions", "ident", "sub", "chan", "chan")
	p := brokertest.Dial(t, e.Addr)
	p.Send(p.Auth("pub", "pubsecret"))
	// Only bytes read after authentication count as received: wait for it,
	// so the PUBLISH below cannot share a read with the AUTH.
	e.waitValue(t, 1, "hpfeeds_client_authenticated_connections", "ident", "pub", "owner", "sensors")

	sc := e.scrape(t)
	expect(t, sc, 3, "hpfeeds_broker_client_connections")
	expect(t, sc, 3, "hpfeeds_broker_connection_made_total")
	expect(t, sc, 2, "hpfeeds_broker_connection_ready_total", "ident", "sub")
	expect(t, sc, 1, "hpfeeds_broker_connection_ready_total", "ident", "pub")
	expect(t, sc, 2, "hpfeeds_client_authenticated_connections", "ident", "sub", "owner", "consumers")
	expect(t, sc, 0, "hpfeeds_broker_connection_send_buffer_fill_total", "ident", "sub")
	expect(t, sc, 0, "hpfeeds_broker_connection_send_buffer_drain_total", "ident", "sub")
	expect(t, sc, 0, "hpfeeds_broker_connection_receive_buffer_fill_total", "ident", "pub")

	// One 12-byte publish to each subscriber: the send buffer fills by the
	// payload and drains by the frame, as in the reference.
	payload1 := "twelve bytes"
	frame1 := brokertest.Publish(t, "pub", "chan", payload1)
	p.Send(frame1)
	for _, s := range subs {
		s.ExpectMessage("pub", "chan", payload1)
	}
	e.waitValue(t, float64(2*len(frame1)), "hpfeeds_broker_connection_send_buffer_drain_total", "ident", "sub")
	sc = e.scrape(t)
	expect(t, sc, 2*12, "hpfeeds_broker_connection_send_buffer_fill_total", "ident", "sub")
	expect(t, sc, float64(len(frame1)), "hpfeeds_broker_connection_receive_buffer_fill_total", "ident", "pub")
	expect(t, sc, 1, "hpfeeds_broker_receive_publish_count_total", "ident", "pub", "chan", "chan")
	expect(t, sc, 2, "hpfeeds_broker_messages_delivered_total", "ident", "sub")
	expect(t, sc, 2, "hpfeeds_broker_frames_written_total", "ident", "sub")
	expect(t, sc, 2, "hpfeeds_broker_writes_total", "ident", "sub")
	expect(t, sc, 0, "hpfeeds_broker_connection_send_buffer_size", "ident", "sub")

	// Half a frame waits in the receive buffer until the rest arrives.
	payload2 := strings.Repeat("x", 2000)
	frame2 := brokertest.Publish(t, "pub", "chan", payload2)
	p.Send(frame2[:10])
	e.waitValue(t, 10, "hpfeeds_broker_connection_receive_buffer_size", "ident", "pub")
	p.Send(frame2[10:])
	for _, s := range subs {
		s.ExpectMessage("pub", "chan", payload2)
	}
	e.waitValue(t, float64(2*len(frame1)+2*len(frame2)), "hpfeeds_broker_connection_send_buffer_drain_total", "ident", "sub")
	sc = e.scrape(t)
	expect(t, sc, 0, "hpfeeds_broker_connection_receive_buffer_size", "ident", "pub")

	subs[1].Send(brokertest.Unsubscribe(t, "sub", "chan"))
	e.waitValue(t, 1, "hpfeeds_broker_subscriptions", "ident", "sub", "chan", "chan")

	// Everyone leaves: gauges go back to zero, counters stay.
	for _, c := range append(subs, p) {
		c.Conn.Close()
	}
	e.waitValue(t, 0, "hpfeeds_broker_client_connections")
	sc = e.scrape(t)
	expect(t, sc, 0, "hpfeeds_broker_subscriptions", "ident", "sub", "chan", "chan")
	expect(t, sc, -1, "hpfeeds_broker_connection_send_buffer_size", "ident", "sub")
	expect(t, sc, -1, "hpfeeds_broker_connection_receive_buffer_size", "ident", "pub")
	expect(t, sc, -1, "hpfeeds_client_authenticated_connections", "ident", "sub", "owner", "consumers")
	expect(t, sc, 2, "hpfeeds_broker_connection_lost_total", "ident", "sub")
	expect(t, sc, 1, "hpfeeds_broker_connection_lost_total", "ident", "pub")
	expect(t, sc, 2*12+2*2000, "hpfeeds_broker_connection_send_buffer_fill_total", "ident", "sub")
	expect(t, sc, float64(2*len(frame1)+2*len(frame2)), "hpfeeds_broker_connection_send_buffer_drain_total", "ident", "sub")
	expect(t, sc, float64(len(frame1)+len(frame2)), "hpfeeds_broker_connection_receive_buffer_fill_total", "ident", "pub")
	expect(t, sc, 4, "hpfeeds_broker_messages_delivered_total", "ident", "sub")
	expect(t, sc, 4, "hpfeeds_broker_frames_written_total", "ident", "sub")
	expect(t, sc, 4, "hpfeeds_broker_writes_total", "ident", "sub")
	expect(t, sc, 2, "hpfeeds_broker_receive_publish_count_total", "ident", "pub", "chan", "chan")
	// Frame buffers outside the heap: none holds a frame once all left.
	expect(t, sc, 0, "hpfeeds_broker_frame_buffers_bytes", "state", "in-use")
	if sc.metric("hpfeeds_broker_frame_buffers_bytes", "state", "free") == nil {
		t.Error("no hpfeeds_broker_frame_buffers_bytes{state=\"free\"}")
	}

	m := sc.metric("hpfeeds_broker_receive_publish_size", "ident", "pub", "chan", "chan")
	if m == nil || m.Histogram == nil {
		t.Fatal("no receive_publish_size histogram for pub/chan")
	}
	h := m.Histogram
	if h.GetSampleCount() != 2 || h.GetSampleSum() != 2012 {
		t.Errorf("publish size histogram count %d sum %v, want 2 and 2012", h.GetSampleCount(), h.GetSampleSum())
	}
	wantBuckets := map[float64]uint64{1024: 1, 2048: 2, 4194304: 2}
	if len(h.Bucket) != broker.NumPublishBuckets { // the parser adds +Inf
		t.Errorf("%d buckets, want %d", len(h.Bucket), broker.NumPublishBuckets)
	}
	for _, b := range h.Bucket {
		if want, ok := wantBuckets[b.GetUpperBound()]; ok && b.GetCumulativeCount() != want {
			t.Errorf("bucket le=%v holds %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), want)
		}
	}
}

// Every error category is counted once per failure; failed logins only
// ever under the empty ident, so no label value comes from a client that
// did not authenticate.
func TestErrorCategories(t *testing.T) {
	e := startExported(t, brokenStore{testUsers()})
	cases := []struct {
		name     string
		frames   func(c *brokertest.Client) [][]byte
		want     string
		ident    string
		category string
	}{
		{"first message not AUTH", func(c *brokertest.Client) [][]byte {
			return [][]byte{brokertest.Publish(t, "first-not-auth", "chan", "x")}
		}, "First message was not AUTH", "", broker.CategoryInvalidFirstMessage},
		{"unknown ident", func(c *brokertest.Client) [][]byte {
			return [][]byte{c.Auth("attacker-chosen", "x")}
		}, "Authentication failed for attacker-chosen", "", broker.CategoryInvalidIdent},
		{"wrong secret", func(c *brokertest.Client) [][]byte {
			return [][]byte{c.Auth("pub", "wrong")}
		}, "Authentication failed for pub", "", broker.CategoryInvalidSecret},
		{"store failure", func(c *brokertest.Client) [][]byte {
			return [][]byte{c.Auth("broken", "x")}
		}, "Authentication failed for broken", "", broker.CategoryErrorCheckingIdent},
		{"publish ident mismatch", func(c *brokertest.Client) [][]byte {
			return [][]byte{c.Auth("pub", "pubsecret"), brokertest.Publish(t, "forged-ident", "chan", "x")}
		}, "Invalid authkey in message, ident=forged-ident", "pub", broker.CategoryIdentMismatchPub},
		{"publish not allowed", func(c *brokertest.Client) [][]byte {
			return [][]byte{c.Auth("sub", "subsecret"), brokertest.Publish(t, "sub", "forbidden-pub-chan", "x")}
		}, "Authkey not allowed to pub here. ident=sub, chan=forbidden-pub-chan", "sub", broker.CategoryNoPubPermission},
		{"subscribe not allowed", func(c *brokertest.Client) [][]byte {
			return [][]byte{c.Auth("pub", "pubsecret"), brokertest.Subscribe(t, "forged-sub-ident", "forbidden-sub-chan")}
		}, "Authkey not allowed to sub here. ident=pub, chan=forbidden-sub-chan", "pub", broker.CategoryNoSubPermission},
	}
	for _, tc := range cases {
		c := brokertest.Dial(t, e.Addr)
		c.Send(tc.frames(c)...)
		c.ExpectError(tc.want)
		e.waitValue(t, 1, "hpfeeds_broker_connection_error_total", "ident", tc.ident, "category", tc.category)
	}
	e.waitValue(t, 0, "hpfeeds_broker_client_connections")
	sc := e.scrape(t)
	expect(t, sc, 7, "hpfeeds_broker_connection_made_total")
	expect(t, sc, 4, "hpfeeds_broker_connection_lost_total", "ident", "")
	expect(t, sc, 2, "hpfeeds_broker_connection_lost_total", "ident", "pub")
	expect(t, sc, 1, "hpfeeds_broker_connection_lost_total", "ident", "sub")
	expect(t, sc, 2, "hpfeeds_broker_connection_ready_total", "ident", "pub")
	expect(t, sc, 1, "hpfeeds_broker_connection_ready_total", "ident", "sub")
	expect(t, sc, 1, "hpfeeds_broker_auth_lookup_failures_total", "store", "memory")
	if m := sc.metric("hpfeeds_broker_auth_lookup_duration_seconds", "store", "memory"); m == nil || m.Histogram.GetSampleCount() != 6 {
		t.Errorf("lookup duration histogram: %v, want 6 lookups", m)
	}
	for _, s := range []string{"first-not-auth", "attacker-chosen", "broken", "forged", "forbidden"} {
		if strings.Contains(sc.text, s) {
			t.Errorf("%q, which only an unauthenticated or refused request carried, appears in /metrics", s)
		}
	}
}

// A subscriber that stops reading: its queue shows in send_buffer_size,
// the deadline starts, and either recovers when it reads again or closes
// it; the hard bound closes it at once.
func TestBackpressureSeries(t *testing.T) {
	limits := func(deadline time.Duration, hard int) func(*broker.Config) {
		return func(c *broker.Config) {
			c.MaxPublishSize = 64 << 10
			c.SendQueueSoft = 256 << 10
			c.SendQueueLow = 64 << 10
			c.SendQueueHard = hard
			c.BackpressureDeadline = deadline
		}
	}
	payload := strings.Repeat("y", 60<<10)

	// stall subscribes a client that does not read, then publishes until
	// cond holds; it returns the subscriber and how many frames were sent.
	stall := func(t *testing.T, e *exported, cond func(*scrape) bool) (*brokertest.Client, int) {
		s := brokertest.Dial(t, e.Addr)
		s.Send(s.Auth("sub", "subsecret"), brokertest.Subscribe(t, "sub", "chan"))
		e.waitValue(t, 1, "hpfeeds_broker_subscriptions", "ident", "sub", "chan", "chan")
		p := brokertest.Dial(t, e.Addr)
		p.Send(p.Auth("pub", "pubsecret"))
		frame := brokertest.Publish(t, "pub", "chan", payload)
		// Socket buffers on loopback hold a few MB; 1000 frames are 60 MB.
		n := 0
		for ; n < 1000; n += 8 {
			if cond(e.scrape(t)) {
				return s, n
			}
			for range 8 {
				p.Send(frame)
			}
		}
		// A fast machine publishes it all before a deadline can expire.
		for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			if cond(e.scrape(t)) {
				return s, n
			}
		}
		t.Fatal("publishing 60 MB never got the subscriber into backpressure")
		return nil, 0
	}

	// The queue may cross the soft mark and drain back below the low one
	// several times while the socket buffers fill: each crossing starts the
	// deadline and each drain recovers it.
	t.Run("recover", func(t *testing.T) {
		e := startExported(t, testUsers(), limits(time.Hour, 1<<30))
		s, n := stall(t, e, func(sc *scrape) bool {
			return sc.value("hpfeeds_broker_connection_send_buffer_size", "ident", "sub") > 256<<10
		})
		for range n {
			s.ExpectMessage("pub", "chan", payload)
		}
		e.waitValue(t, 0, "hpfeeds_broker_connection_send_buffer_size", "ident", "sub")
		sc := e.scrape(t)
		starts := sc.value("hpfeeds_broker_connection_send_buffer_deadline_start_total", "ident", "sub")
		if starts < 1 {
			t.Fatalf("queue went past the soft mark but %v deadline starts", starts)
		}
		expect(t, sc, starts, "hpfeeds_broker_connection_send_buffer_deadline_recover_total", "ident", "sub")
		expect(t, sc, -1, "hpfeeds_broker_connection_error_total", "ident", "sub", "category", broker.CategoryDeadlineTimerExpired)
	})

	t.Run("deadline", func(t *testing.T) {
		e := startExported(t, testUsers(), limits(200*time.Millisecond, 1<<30))
		s, _ := stall(t, e, func(sc *scrape) bool {
			return sc.value("hpfeeds_broker_backpressure_closes_total", "ident", "sub", "reason", "deadline") == 1
		})
		s.ExpectError("Backpressure deadline timer expired")
		sc := e.scrape(t)
		expect(t, sc, 1, "hpfeeds_broker_connection_error_total", "ident", "sub", "category", broker.CategoryDeadlineTimerExpired)
		starts := sc.value("hpfeeds_broker_connection_send_buffer_deadline_start_total", "ident", "sub")
		recovers := sc.value("hpfeeds_broker_connection_send_buffer_deadline_recover_total", "ident", "sub")
		if starts < 1 || recovers != starts-1 {
			t.Errorf("%v deadline starts, %v recoveries; want the last start unrecovered", starts, recovers)
		}
		expect(t, sc, 0, "hpfeeds_broker_backpressure_closes_total", "ident", "sub", "reason", "hard-bound")
	})

	t.Run("hard bound", func(t *testing.T) {
		e := startExported(t, testUsers(), limits(time.Hour, 512<<10))
		s, _ := stall(t, e, func(sc *scrape) bool {
			return sc.value("hpfeeds_broker_backpressure_closes_total", "ident", "sub", "reason", "hard-bound") == 1
		})
		s.ExpectError("Backpressure deadline timer expired")
		sc := e.scrape(t)
		expect(t, sc, 1, "hpfeeds_broker_connection_error_total", "ident", "sub", "category", broker.CategoryDeadlineTimerExpired)
		expect(t, sc, 0, "hpfeeds_broker_backpressure_closes_total", "ident", "sub", "reason", "deadline")
	})
}

func TestHealthz(t *testing.T) {
	e := startExported(t, testUsers())
	resp, err := http.Get(e.url + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "{}" || resp.Header.Get("Content-Type") != "application/json; charset=utf-8" {
		t.Errorf("GET /healthz: %s %q %q", resp.Status, resp.Header.Get("Content-Type"), body)
	}
}

// The Go runtime and process collectors are on.
func TestRuntimeCollectors(t *testing.T) {
	sc := startExported(t, testUsers()).scrape(t)
	for _, name := range []string{"go_goroutines", "go_memstats_alloc_bytes", "process_cpu_seconds_total", "process_resident_memory_bytes"} {
		if sc.fams[name] == nil {
			t.Errorf("%s missing", name)
		}
	}
}

// Connections that close while scrapes run are counted exactly once: no
// counter ever goes down between two scrapes, and the totals add up.
func TestCountersMonotonicUnderChurn(t *testing.T) {
	e := startExported(t, testUsers())
	done := make(chan struct{})
	scraped := make(chan int)
	go func() {
		prev := map[string]float64{}
		n := 0
		defer func() { scraped <- n }()
		for {
			select {
			case <-done:
				return
			default:
			}
			sc := e.scrape(t)
			n++
			seen := map[string]bool{}
			for name, f := range sc.fams {
				for _, m := range f.Metric {
					var v float64
					switch {
					case m.Counter != nil:
						v = m.Counter.GetValue()
					case m.Histogram != nil:
						v = float64(m.Histogram.GetSampleCount())
					default:
						continue
					}
					key := name
					for _, lp := range m.Label {
						key += " " + lp.GetName() + "=" + lp.GetValue()
					}
					if v < prev[key] {
						t.Errorf("%s went down from %v to %v", key, prev[key], v)
					}
					prev[key] = v
					seen[key] = true
				}
			}
			for key := range prev {
				if !seen[key] {
					t.Errorf("counter %s disappeared", key)
				}
			}
		}
	}()

	const rounds, messages = 20, 50
	payload := "churn"
	for range rounds {
		s := brokertest.Dial(t, e.Addr)
		s.Send(s.Auth("sub", "subsecret"), brokertest.Subscribe(t, "sub", "chan"))
		e.waitValue(t, 1, "hpfeeds_broker_subscriptions", "ident", "sub", "chan", "chan")
		p := brokertest.Dial(t, e.Addr)
		frames := [][]byte{p.Auth("pub", "pubsecret")}
		for range messages {
			frames = append(frames, brokertest.Publish(t, "pub", "chan", payload))
		}
		p.Send(bytes.Join(frames, nil))
		for range messages {
			s.ExpectMessage("pub", "chan", payload)
		}
		s.Conn.Close()
		p.Conn.Close()
		e.waitValue(t, 0, "hpfeeds_broker_client_connections")
	}
	close(done)
	if n := <-scraped; n < rounds {
		t.Errorf("only %d scrapes ran during the churn", n)
	}
	sc := e.scrape(t)
	expect(t, sc, rounds*messages, "hpfeeds_broker_receive_publish_count_total", "ident", "pub", "chan", "chan")
	expect(t, sc, rounds*messages, "hpfeeds_broker_messages_delivered_total", "ident", "sub")
	expect(t, sc, rounds*messages*float64(len(payload)), "hpfeeds_broker_connection_send_buffer_fill_total", "ident", "sub")
	expect(t, sc, rounds, "hpfeeds_broker_connection_lost_total", "ident", "sub")
}

// The Python broker's series keep its names, types and help texts, so
// dashboards and alerts built on it keep working.
func TestReferenceNamesTypesHelp(t *testing.T) {
	sc := ordinaryTraffic(t)
	for _, want := range []struct{ name, typ, help string }{
		{"hpfeeds_broker_client_connections", "GAUGE", "Number of clients connected to broker"},
		{"hpfeeds_broker_connection_made_total", "COUNTER", "Number of connections established"},
		{"hpfeeds_broker_connection_ready_total", "COUNTER", "Number of connections established + authenticated"},
		{"hpfeeds_broker_connection_error_total", "COUNTER", "Number of connections that experienced a protocol error"},
		{"hpfeeds_broker_connection_lost_total", "COUNTER", "Number of connections lost"},
		{"hpfeeds_broker_connection_send_buffer_size", "GAUGE", "Number of bytes queued for transmission"},
		{"hpfeeds_broker_connection_receive_buffer_size", "GAUGE", "Number of bytes received but not yet parsed"},
		{"hpfeeds_broker_connection_receive_buffer_fill_total", "COUNTER", "Number of bytes queued in the parsing buffer"},
		{"hpfeeds_broker_connection_send_buffer_fill_total", "COUNTER", "Number of bytes queued in the send buffer"},
		{"hpfeeds_broker_connection_send_buffer_drain_total", "COUNTER", "Number of bytes drained from the send buffer and sent"},
		{"hpfeeds_broker_connection_send_buffer_deadline_start_total", "COUNTER", "High watermark was exceeded and this connection was put on a deadline timer"},
		{"hpfeeds_broker_connection_send_buffer_deadline_recover_total", "COUNTER", "Buffer recovered to low watermark or better and deadline timer was cancelled"},
		{"hpfeeds_broker_subscriptions", "GAUGE", "Number of subscriptions to a channel"},
		{"hpfeeds_broker_receive_publish_count_total", "COUNTER", "Number of events received by broker for a channel"},
		{"hpfeeds_broker_receive_publish_size", "HISTOGRAM", "Sizes of messages received by broker for a channel"},
		{"hpfeeds_client_authenticated_connections", "GAUGE", "Authenticated connections"},
	} {
		f := sc.fams[want.name]
		if f == nil {
			t.Errorf("%s not exported", want.name)
			continue
		}
		if f.GetType().String() != want.typ || f.GetHelp() != want.help {
			t.Errorf("%s: %s %q, want %s %q", want.name, f.GetType(), f.GetHelp(), want.typ, want.help)
		}
	}
}

// Connections refused for a limit are counted by reason.
func TestConnectionsRefusedSeries(t *testing.T) {
	e := startExported(t, testUsers(), func(c *broker.Config) { c.MaxConnections = 1 })
	s := brokertest.Dial(t, e.Addr)
	s.Send(s.Auth("sub", "subsecret"))
	for i := 0; i < 3; i++ {
		nc, err := net.Dial("tcp", e.Addr)
		if err != nil {
			t.Fatal(err)
		}
		io.ReadAll(nc)
		nc.Close()
	}
	e.waitValue(t, 3, "hpfeeds_broker_connections_refused_total", "reason", broker.RefusedMaxConnections)
}

// The time of each ident's last publish, for alerts on sensors that went
// quiet: it survives the publisher's disconnect, and an ident that never
// published has no series.
func TestIdentLastPublish(t *testing.T) {
	e := startExported(t, testUsers())
	s := brokertest.Dial(t, e.Addr)
	s.Send(s.Auth("sub", "subsecret"), brokertest.Subscribe(t, "sub", "chan"))
	e.waitValue(t, 1, "hpfeeds_broker_subscriptions", "ident", "sub", "chan", "chan")
	before := float64(time.Now().Add(-clockSlack).UnixNano()) / 1e9
	p := brokertest.Dial(t, e.Addr)
	p.Send(p.Auth("pub", "pubsecret"), brokertest.Publish(t, "pub", "chan", "event"))
	s.ExpectMessage("pub", "chan", "event")
	p.Conn.Close()
	e.waitValue(t, 1, "hpfeeds_broker_connection_lost_total", "ident", "pub")
	sc := e.scrape(t)
	got := sc.value("hpfeeds_broker_ident_last_publish_timestamp_seconds", "ident", "pub")
	if now := float64(time.Now().UnixNano()) / 1e9; got < before || got > now {
		t.Errorf("last publish %f, want within [%f, %f]", got, before, now)
	}
	if m := sc.metric("hpfeeds_broker_ident_last_publish_timestamp_seconds", "ident", "sub"); m != nil {
		t.Errorf("an ident that never published has a last publish: %v", m)
	}
}

// clockSlack is how far behind the broker's coarse clock may be.
const clockSlack = 300 * time.Millisecond
