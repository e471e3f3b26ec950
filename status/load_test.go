package status_test

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
	"github.com/hpfeeds-go/hpfeeds/status"
)

const (
	maxLimit   = 1024 // status.MaxLimit, as nats-server caps it
	pagesBurst = 30   // status.PagesBurst
)

// /connz answers at most MaxLimit connections whatever limit asks: before,
// limit=1000000 listed all 5,000 connections to every scraper.
func TestConnzLimitCapped(t *testing.T) {
	f := start(t, time.Hour)
	const extra = maxLimit + 8
	for range extra {
		brokertest.Dial(t, f.srv.Addr)
	}
	brokertest.Eventually(t, "the connections", func() bool { return len(f.srv.Broker.Connections()) == extra+2 })
	var z status.Connz
	get(t, f.url+"/connz?limit=1000000", &z)
	if z.Limit != maxLimit || len(z.Connections) != maxLimit || z.Total != extra+2 {
		t.Errorf("limit=1000000 answered limit %d, %d of %d connections; want %d of %d",
			z.Limit, len(z.Connections), z.Total, maxLimit, extra+2)
	}
	get(t, f.url+"/connz?offset=1024&limit=1000000", &z)
	if len(z.Connections) != extra+2-maxLimit {
		t.Errorf("the second page has %d connections, want %d", len(z.Connections), extra+2-maxLimit)
	}
}

// Concurrent requests for a page share one computation, and its answer is
// shown again for DefaultCacheFor: every answer carries the instant it was
// computed, and 32 scrapers at once all get the same one. Before, each
// request walked every connection itself.
func TestPagesShareOneAnswer(t *testing.T) {
	f := start(t, time.Hour)
	// Kept a minute here, so a loaded machine cannot make the 32 requests
	// straddle two answers.
	mux := http.NewServeMux()
	status.Mount(mux, f.srv.Broker, status.Options{CacheFor: time.Minute, PagesPerSecond: -1})
	kept := httptest.NewServer(mux)
	t.Cleanup(kept.Close)
	for _, path := range []string{"/connz?limit=1000000", "/chanz", "/identz"} {
		nows := make(chan time.Time, 32)
		var wg sync.WaitGroup
		for range cap(nows) {
			wg.Go(func() { nows <- now(t, kept.URL+path) })
		}
		wg.Wait()
		close(nows)
		first := <-nows
		for n := range nows {
			if !n.Equal(first) {
				t.Fatalf("%s: concurrent answers computed at %v and %v", path, first, n)
			}
		}
		// The fixture's pages keep answers DefaultCacheFor.
		again := now(t, f.url+path)
		brokertest.Eventually(t, path+" computed anew", func() bool { return now(t, f.url+path).After(again) })
	}
}

// A source asking many pages gets 429 past a burst, and another source
// still gets its pages. Before, every request was answered, and 32
// such clients took the broker's CPU from its deliveries.
func TestPagesLimitedPerSource(t *testing.T) {
	f := start(t, time.Hour)
	mux := http.NewServeMux()
	status.Mount(mux, f.srv.Broker, status.Options{})
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	ask := func(src string) int {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
		resp, err := c.Get(hs.URL + "/chanz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	codes := map[int]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 2 * pagesBurst { // at once: each refusal is held a second
		wg.Go(func() {
			code := ask("127.0.0.1")
			mu.Lock()
			codes[code]++
			mu.Unlock()
		})
	}
	wg.Wait()
	if codes[http.StatusTooManyRequests] == 0 || codes[http.StatusOK] < pagesBurst/2 {
		t.Errorf("%d pages asked at once from one address got %v; want 429 past the burst of %d", 2*pagesBurst, codes, pagesBurst)
	}
	if code := ask("127.0.0.2"); code != http.StatusOK {
		t.Errorf("another address got %d", code)
	}
}

// now is the instant a JSON page says it was computed at.
func now(t *testing.T, url string) time.Time {
	resp, err := http.Get(url)
	if err != nil {
		t.Error(err)
		return time.Time{}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var z struct{ Now time.Time }
	if err := json.Unmarshal(body, &z); err != nil {
		t.Errorf("GET %s: %v", url, err)
	}
	return z.Now
}
