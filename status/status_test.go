package status_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
	"github.com/hpfeeds-go/hpfeeds/client"
	"github.com/hpfeeds-go/hpfeeds/metrics"
	"github.com/hpfeeds-go/hpfeeds/status"
)

// fixture is a broker with its exporter and status pages, a subscriber
// (logger), a publisher (sensor) and a sensor that published once and left
// (quiet).
type fixture struct {
	srv            *brokertest.Server
	url            string
	logger, sensor *client.Client
}

const payload = "{\"attack\": 1}"

func start(t *testing.T, staleAfter time.Duration) *fixture {
	t.Helper()
	users := brokertest.NewUsers(
		auth.User{Ident: "sensor", Owner: "alice", Secret: "s", PubChans: []string{"events"}},
		auth.User{Ident: "quiet", Owner: "alice", Secret: "s", PubChans: []string{"events"}},
		auth.User{Ident: "logger", Owner: "bob", Secret: "s", SubChans: []string{"events"}},
	)
	srv := brokertest.Start(t, users, func(c *broker.Config) { c.Logger = slog.New(slog.DiscardHandler) })
	mux := metrics.Handler(metrics.NewRegistry(srv.Broker, nil))
	// No limit per source: tests ask from one address in loops.
	status.Mount(mux, srv.Broker, status.Options{StaleAfter: staleAfter, Name: "test-broker", Version: "v0-test", PagesPerSecond: -1})
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	f := &fixture{srv: srv, url: hs.URL}
	f.logger = dialClient(t, srv.Addr, "logger")
	if err := f.logger.Subscribe("events"); err != nil {
		t.Fatal(err)
	}
	brokertest.Eventually(t, "the subscription", func() bool { return channel(srv.Broker, "events").Subscribers == 1 })
	quiet := dialClient(t, srv.Addr, "quiet")
	quiet.Publish("events", []byte("once"))
	f.receive(t, "once")
	quiet.Close()
	brokertest.Eventually(t, "quiet to leave", func() bool { return len(srv.Broker.Connections()) == 1 })
	f.sensor = dialClient(t, srv.Addr, "sensor")
	for range 3 {
		f.sensor.Publish("events", []byte(payload))
		f.receive(t, payload)
	}
	// The writer counts a frame once its write call returns, which can
	// be after the logger has read it.
	brokertest.Eventually(t, "the writes counted", func() bool {
		lg := byIdent(srv.Broker.Connections(), "logger")
		return lg.FramesOut == 4 && lg.BytesQueued == 0
	})
	return f
}

func dialClient(t *testing.T, addr, ident string) *client.Client {
	t.Helper()
	c, err := client.Dial(context.Background(), client.Config{Addr: addr, Ident: ident, Secret: "s", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (f *fixture) receive(t *testing.T, want string) {
	t.Helper()
	select {
	case m := <-f.logger.Messages():
		if string(m.Payload) != want {
			t.Fatalf("logger got %q, want %q", m.Payload, want)
		}
	case err := <-f.logger.Errors():
		t.Fatal(err)
	case <-time.After(10 * time.Second):
		t.Fatalf("logger never got %q", want)
	}
}

func channel(b *broker.Broker, name string) broker.ChannelInfo {
	for _, c := range b.Channels() {
		if c.Name == name {
			return c
		}
	}
	return broker.ChannelInfo{}
}

// get fetches path and decodes its JSON into v, or returns the status and
// body of an error.
func get(t *testing.T, url string, v any) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusOK && v != nil {
		if err := json.Unmarshal(body, v); err != nil {
			t.Fatalf("GET %s: %v in %s", url, err, body)
		}
	}
	return resp.StatusCode, string(body)
}

func byIdent(cs []broker.ConnInfo, ident string) *broker.ConnInfo {
	for i := range cs {
		if cs[i].Ident == ident {
			return &cs[i]
		}
	}
	return nil
}

func TestConnzFields(t *testing.T) {
	t0 := time.Now()
	f := start(t, time.Hour)
	var z status.Connz
	get(t, f.url+"/connz", &z)
	if z.Total != 2 || len(z.Connections) != 2 || z.Sort != "cid" || z.Limit != status.DefaultLimit {
		t.Fatalf("connz envelope %+v", z)
	}
	lg, sn := byIdent(z.Connections, "logger"), byIdent(z.Connections, "sensor")
	if lg == nil || sn == nil {
		t.Fatalf("connections %+v", z.Connections)
	}
	for _, c := range []*broker.ConnInfo{lg, sn} {
		if !strings.HasPrefix(c.Addr, "127.0.0.1:") || c.Endpoint != "tcp:127.0.0.1:0" || c.TLS ||
			c.Since.Before(t0) || c.Since.After(z.Now) || c.ID == 0 {
			t.Errorf("connection %+v", c)
		}
	}
	frame := int64(5 + 1 + len("sensor") + 1 + len("events") + len(payload))
	// The logger: AUTH and SUBSCRIBE in; four messages out.
	if lg.Owner != "bob" || !slices.Equal(lg.Subscriptions, []string{"events"}) || lg.FramesIn != 2 ||
		lg.FramesOut != 4 || lg.BytesOut < uint64(3*frame) || lg.Published != 0 || !lg.LastPublish.IsZero() || lg.BytesQueued != 0 {
		t.Errorf("logger %+v", lg)
	}
	if sn.Owner != "alice" || len(sn.Subscriptions) != 0 || sn.FramesIn != 4 || sn.FramesOut != 0 ||
		sn.BytesIn < uint64(3*frame) || sn.Published != 3 || sn.LastPublish.Before(t0.Add(-time.Second)) || sn.LastPublish.After(z.Now) {
		t.Errorf("sensor %+v", sn)
	}
}

func TestConnzPagingAndSorting(t *testing.T) {
	f := start(t, time.Hour)
	for range 5 {
		dialClient(t, f.srv.Addr, "logger")
	}
	brokertest.Eventually(t, "7 connections", func() bool { return len(f.srv.Broker.Connections()) == 7 })
	var seen []uint64
	for off := 0; off < 8; off += 3 {
		var z status.Connz
		get(t, f.url+"/connz?limit=3&offset="+strconv.Itoa(off), &z)
		if z.Total != 7 || z.Offset != off || z.Limit != 3 || len(z.Connections) != min(3, 7-off) {
			t.Fatalf("page at %d: %+v", off, z)
		}
		for _, c := range z.Connections {
			seen = append(seen, c.ID)
		}
	}
	if !slices.IsSorted(seen) || len(slices.Compact(slices.Clone(seen))) != 7 {
		t.Errorf("pages by cid gave %v", seen)
	}
	var z status.Connz
	get(t, f.url+"/connz?offset=100", &z)
	if z.Total != 7 || len(z.Connections) != 0 {
		t.Errorf("past the end: %+v", z)
	}
	get(t, f.url+"/connz?offset=1&limit=9223372036854775807", &z) // lo+limit overflowed
	if len(z.Connections) != 6 {
		t.Errorf("the largest limit: %d connections", len(z.Connections))
	}
	get(t, f.url+"/connz?sort=msgs_from&limit=1", &z)
	if len(z.Connections) != 1 || z.Connections[0].Ident != "sensor" || z.Sort != "msgs_from" {
		t.Errorf("sort=msgs_from: %+v", z.Connections)
	}
	get(t, f.url+"/connz?sort=bytes_to&limit=1", &z)
	if z.Connections[0].Ident != "logger" || z.Connections[0].FramesOut != 4 {
		t.Errorf("sort=bytes_to: %+v", z.Connections)
	}
	for _, bad := range []string{"sort=nope", "limit=-1", "offset=x"} {
		if code, body := get(t, f.url+"/connz?"+bad, nil); code != http.StatusBadRequest || !strings.Contains(body, strings.Split(bad, "=")[0]) {
			t.Errorf("%s: %d %s", bad, code, body)
		}
	}
}

func TestChanz(t *testing.T) {
	f := start(t, time.Hour)
	var z status.Chanz
	get(t, f.url+"/chanz", &z)
	if z.WindowSeconds != 60 || len(z.Channels) != 1 {
		t.Fatalf("chanz %+v", z)
	}
	c := z.Channels[0]
	if c.Name != "events" || c.Publishers != 1 || c.Subscribers != 1 || c.Messages != 4 ||
		c.Bytes != uint64(3*len(payload)+len("once")) || c.MsgRate <= 0 || c.ByteRate <= 0 || c.LastPublish.IsZero() {
		t.Errorf("channel %+v", c)
	}
}

// A sensor that published once and left becomes stale after the stale
// period; one that keeps publishing does not, nor does a subscriber.
func TestIdentzStale(t *testing.T) {
	const staleAfter = 1500 * time.Millisecond
	f := start(t, staleAfter)
	var z status.Identz
	get(t, f.url+"/identz", &z)
	if z.Stale != 0 || z.StaleAfterSeconds != staleAfter.Seconds() || len(z.Idents) != 3 {
		t.Fatalf("before the stale period: %+v", z)
	}
	deadline := time.Now().Add(10 * time.Second)
	for z.Stale == 0 && time.Now().Before(deadline) {
		f.sensor.Publish("events", []byte(payload))
		f.receive(t, payload)
		time.Sleep(100 * time.Millisecond)
		get(t, f.url+"/identz", &z)
	}
	if z.Stale != 1 {
		t.Fatalf("no sensor went stale: %+v", z)
	}
	idents := map[string]broker.IdentInfo{}
	for _, in := range z.Idents {
		idents[in.Ident] = in
	}
	q, s, l := idents["quiet"], idents["sensor"], idents["logger"]
	if !q.Stale || q.Connections != 0 || q.Owner != "alice" || !q.Publisher || q.Logins != 1 ||
		q.LastReason != "closed by the client" || q.LastDisconnect.IsZero() || q.Channels["events"].IsZero() ||
		!q.LastPublish.Equal(q.Channels["events"]) || z.Now.Sub(q.LastPublish) <= staleAfter {
		t.Errorf("quiet %+v", q)
	}
	if s.Stale || s.Connections != 1 || !s.LastDisconnect.IsZero() || s.LastPublish.Before(q.LastPublish) {
		t.Errorf("sensor %+v", s)
	}
	if l.Stale || l.Publisher || l.Connections != 1 || len(l.Channels) != 0 || !strings.HasPrefix(l.LastAddr, "127.0.0.1:") {
		t.Errorf("logger %+v", l)
	}
}

// What `hpfeeds-broker status` prints: the three tables, from a real
// broker's exporter.
func TestFetchAndWriteText(t *testing.T) {
	f := start(t, time.Hour)
	r, err := status.Fetch(context.Background(), http.DefaultClient, f.url+"/")
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := status.WriteText(&b, r); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^SENSORS \(3 idents, 0 stale after 1h0m0s without a publish\)$`),
		regexp.MustCompile(`(?m)^IDENT +OWNER +STATE +CONNS +LAST PUBLISH +LAST LOGIN +LAST DISCONNECT`),
		regexp.MustCompile(`(?m)^logger +bob +connected +1 +subscriber +(just now|\d+s ago) from 127\.0\.0\.1:\d+ +- *$`),
		regexp.MustCompile(`(?m)^quiet +alice +offline +0 +(just now|\d+s ago) .* \(closed by the client\) *$`),
		regexp.MustCompile(`(?m)^events +1 +1 +\d+\.\d +\d+\.\d +4 +43 B +0 +(just now|\d+s ago) *$`),
		regexp.MustCompile(`(?m)^CONNECTIONS \(2 of 2\)$`),
		regexp.MustCompile(`(?m)^1 +logger +127\.0\.0\.1:\d+ +tcp:127\.0\.0\.1:0 +no +(just now|\d+s ago) +events +2/4 `),
	} {
		if !want.MatchString(out) {
			t.Errorf("no line matching %s in:\n%s", want, out)
		}
	}
}

func TestFetchUnreachable(t *testing.T) {
	hs := httptest.NewServer(http.NotFoundHandler())
	url := hs.URL
	hs.Close()
	_, err := status.Fetch(context.Background(), http.DefaultClient, url)
	if err == nil || !strings.Contains(err.Error(), "exporter not reachable") || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("got %v", err)
	}
}

// The logger outage: the sensor publishes, nobody subscribes. /chanz, the
// page and the text tables flag the channel and count what was lost; the
// flag goes once a logger is back.
func TestUnheardChannel(t *testing.T) {
	f := start(t, time.Hour)
	f.logger.Close()
	brokertest.Eventually(t, "the logger to leave", func() bool { return channel(f.srv.Broker, "events").Subscribers == 0 })
	for range 3 {
		f.sensor.Publish("events", []byte(payload))
	}
	brokertest.Eventually(t, "3 undelivered", func() bool { return channel(f.srv.Broker, "events").Undelivered == 3 })

	var z status.Chanz
	get(t, f.url+"/chanz", &z)
	if c := z.Channels[0]; !c.Unheard || c.Undelivered != 3 || c.UndeliveredRate <= 0 || c.Publishers != 1 {
		t.Errorf("chanz %+v", c)
	}
	_, page := get(t, f.url+"/", nil)
	for _, want := range []string{`<tr class="unheard">`, `id="n-unheard">1<`, `events <span class="pill bad">nobody hears</span>`} {
		if !strings.Contains(page, want) {
			t.Errorf("the page lacks %s", want)
		}
	}
	r, err := status.Fetch(context.Background(), http.DefaultClient, f.url)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	status.WriteText(&b, r)
	if want := regexp.MustCompile(`(?m)^events +1 +0 +.* 3 NOBODY HEARS +(just now|\d+s ago) *$`); !want.MatchString(b.String()) {
		t.Errorf("no line matching %s in:\n%s", want, b.String())
	}

	logger := dialClient(t, f.srv.Addr, "logger")
	if err := logger.Subscribe("events"); err != nil {
		t.Fatal(err)
	}
	brokertest.Eventually(t, "a logger back", func() bool { return channel(f.srv.Broker, "events").Subscribers == 1 })
	f.sensor.Publish("events", []byte(payload))
	select {
	case <-logger.Messages():
	case <-time.After(10 * time.Second):
		t.Fatal("the new logger got nothing")
	}
	if c := channel(f.srv.Broker, "events"); c.Unheard || c.Undelivered != 3 {
		t.Errorf("with a logger back: %+v", c)
	}
	// The page is computed anew once its cached answer (a second) expires.
	brokertest.Eventually(t, "the page to stop flagging the channel", func() bool {
		_, page = get(t, f.url+"/", nil)
		return !strings.Contains(page, `<tr class="unheard">`) && strings.Contains(page, `id="n-unheard">0<`)
	})
}
