// Package status serves what a broker is doing to people and scripts: the
// JSON endpoints /connz, /chanz and /identz (named after nats-server's), a
// status page at / built from embedded assets only, and the terminal tables
// of `hpfeeds-broker status`. Everything is computed when asked; nothing
// here runs on the publish path.
package status

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/internal/source"
	"github.com/hpfeeds-go/hpfeeds/internal/tarpit"
)

// DefaultStaleAfter is how long a sensor may publish nothing before it is
// shown as stale.
const DefaultStaleAfter = 15 * time.Minute

// DefaultLimit is how many connections /connz returns unless asked, and
// MaxLimit the most it returns whatever limit asks, as nats-server's: a
// larger page is read with offset.
const (
	DefaultLimit = 1024
	MaxLimit     = 1024
)

// Options are what the pages show besides the broker's state.
type Options struct {
	StaleAfter time.Duration // 0: DefaultStaleAfter
	Name       string        // the broker's name
	Version    string
	// CacheFor is how long an answer is shown again before it is
	// computed anew; 0: DefaultCacheFor, negative: never.
	CacheFor time.Duration
	// PagesPerSecond is how many pages one source (an IPv4 address or an
	// IPv6 /64) gets a second, after a burst of PagesBurst; past it, 429.
	// 0: DefaultPagesPerSecond; negative: no limit.
	PagesPerSecond float64
}

// DefaultPagesPerSecond and PagesBurst bound what one source asks: a
// person, a dashboard or `hpfeeds-broker status` asks a few pages every
// few seconds, while a client asking in a loop got the broker's CPU from
// its deliveries even with answers cached. A request past them is held a
// second before its 429 (tarpit), so such a client asks once a second.
const (
	DefaultPagesPerSecond = 10
	PagesBurst            = 30
)

// Connz is the answer of /connz: one page of the open connections.
type Connz struct {
	Now         time.Time         `json:"now"`
	Total       int               `json:"total"` // open connections
	Offset      int               `json:"offset"`
	Limit       int               `json:"limit"`
	Sort        string            `json:"sort"`
	Connections []broker.ConnInfo `json:"connections"`
}

// Chanz is the answer of /chanz.
type Chanz struct {
	Now           time.Time            `json:"now"`
	WindowSeconds int                  `json:"rate_window_seconds"`
	Channels      []broker.ChannelInfo `json:"channels"`
	// RetainStore is how the retained store fares (with --retain).
	RetainStore *broker.RetainStoreInfo `json:"retain_store,omitempty"`
}

// Identz is the answer of /identz.
type Identz struct {
	Now               time.Time          `json:"now"`
	StaleAfterSeconds float64            `json:"stale_after_seconds"`
	Stale             int                `json:"stale"` // how many idents are stale
	Idents            []broker.IdentInfo `json:"idents"`
}

// pages serves one broker's pages from answers kept for Options.CacheFor:
// data is what the broker said, bodies the encoded answers.
type pages struct {
	b            *broker.Broker
	o            Options
	data, bodies *answers
	sources      source.Map[rate.Limiter]
}

// Mount adds /connz, /chanz, /identz and the status page / to mux.
func Mount(mux *http.ServeMux, b *broker.Broker, o Options) {
	if o.StaleAfter <= 0 {
		o.StaleAfter = DefaultStaleAfter
	}
	if o.CacheFor == 0 {
		o.CacheFor = DefaultCacheFor
	}
	if o.PagesPerSecond == 0 {
		o.PagesPerSecond = DefaultPagesPerSecond
	}
	p := &pages{b: b, o: o, data: newAnswers(o.CacheFor), bodies: newAnswers(o.CacheFor),
		sources: source.Map[rate.Limiter]{Max: 4096, New: func() *rate.Limiter {
			return rate.NewLimiter(rate.Limit(o.PagesPerSecond), PagesBurst)
		}}}
	mux.HandleFunc("GET /connz", func(w http.ResponseWriter, r *http.Request) {
		q, err := parseConnQuery(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		key := fmt.Sprintf("connz %d %d %s", q.offset, q.limit, q.sort)
		p.serve(w, r, key, jsonType, func() []byte { return encodeJSON(p.connz(q)) })
	})
	mux.HandleFunc("GET /chanz", func(w http.ResponseWriter, r *http.Request) {
		p.serve(w, r, "chanz", jsonType, func() []byte { return encodeJSON(p.chanz()) })
	})
	mux.HandleFunc("GET /identz", func(w http.ResponseWriter, r *http.Request) {
		p.serve(w, r, "identz", jsonType, func() []byte { return encodeJSON(p.identz()) })
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		p.serve(w, r, "page", htmlType, p.page)
	})
}

const (
	jsonType = "application/json; charset=utf-8"
	htmlType = "text/html; charset=utf-8"
)

// serve writes the answer kept under key, computing it if none is fresh,
// unless r's source asked too many pages. A nil answer is a page that
// failed to render (logged there).
func (p *pages) serve(w http.ResponseWriter, r *http.Request, key, contentType string, compute func() []byte) {
	if p.o.PagesPerSecond > 0 && !p.sources.Get(source.Of(r.RemoteAddr)).Allow() {
		tarpit.Hold(r, time.Second)
		w.Header().Set("Retry-After", "1")
		http.Error(w, "too many status pages asked from this address; retry in a second", http.StatusTooManyRequests)
		return
	}
	body := p.bodies.get(key, func() any { return compute() }).([]byte)
	if body == nil {
		http.Error(w, "rendering the status page failed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", contentType)
	w.Write(body)
}

func encodeJSON(v any) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	enc.Encode(v)
	return buf.Bytes()
}

// chanz, identz and conns are what the broker says, shared by every page
// within the interval: callers must not change them.
func (p *pages) chanz() *Chanz {
	return p.data.get("chanz", func() any {
		return &Chanz{Now: time.Now(), WindowSeconds: 60, Channels: nonNil(p.b.Channels()), RetainStore: p.b.RetainStore()}
	}).(*Chanz)
}

func (p *pages) identz() *Identz {
	return p.data.get("identz", func() any {
		z := &Identz{Now: time.Now(), StaleAfterSeconds: p.o.StaleAfter.Seconds(), Idents: nonNil(p.b.Idents(p.o.StaleAfter))}
		for _, in := range z.Idents {
			if in.Stale {
				z.Stale++
			}
		}
		return z
	}).(*Identz)
}

// connsAt is the open connections and when they were listed.
type connsAt struct {
	at    time.Time
	conns []broker.ConnInfo
}

func (p *pages) conns() connsAt {
	return p.data.get("conns", func() any { return connsAt{time.Now(), p.b.Connections()} }).(connsAt)
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// connQuery is /connz's paging and sorting, as nats-server spells them.
type connQuery struct {
	offset, limit int
	sort          string
}

// sorts are /connz's sort keys: nats-server's, plus ident. Numbers sort
// largest first, as there.
var sorts = map[string]func(a, b *broker.ConnInfo) int{
	"cid":        func(a, b *broker.ConnInfo) int { return cmp.Compare(a.ID, b.ID) },
	"start":      func(a, b *broker.ConnInfo) int { return a.Since.Compare(b.Since) },
	"uptime":     func(a, b *broker.ConnInfo) int { return a.Since.Compare(b.Since) },
	"ident":      func(a, b *broker.ConnInfo) int { return cmp.Compare(a.Ident, b.Ident) },
	"subs":       func(a, b *broker.ConnInfo) int { return cmp.Compare(len(b.Subscriptions), len(a.Subscriptions)) },
	"pending":    func(a, b *broker.ConnInfo) int { return cmp.Compare(b.BytesQueued, a.BytesQueued) },
	"msgs_to":    func(a, b *broker.ConnInfo) int { return cmp.Compare(b.FramesOut, a.FramesOut) },
	"msgs_from":  func(a, b *broker.ConnInfo) int { return cmp.Compare(b.FramesIn, a.FramesIn) },
	"bytes_to":   func(a, b *broker.ConnInfo) int { return cmp.Compare(b.BytesOut, a.BytesOut) },
	"bytes_from": func(a, b *broker.ConnInfo) int { return cmp.Compare(b.BytesIn, a.BytesIn) },
	"last":       func(a, b *broker.ConnInfo) int { return b.LastPublish.Compare(a.LastPublish) },
	"idle":       func(a, b *broker.ConnInfo) int { return a.LastPublish.Compare(b.LastPublish) },
}

func sortKeys() string {
	keys := make([]string, 0, len(sorts))
	for k := range sorts {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return strings.Join(keys, ", ")
}

func parseConnQuery(r *http.Request) (connQuery, error) {
	q := connQuery{limit: DefaultLimit, sort: "cid"}
	v := r.URL.Query()
	for name, dst := range map[string]*int{"offset": &q.offset, "limit": &q.limit} {
		if s := v.Get(name); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 0 {
				return q, fmt.Errorf("%s=%q: want a whole number, 0 or more", name, s)
			}
			*dst = n
		}
	}
	q.limit = min(q.limit, MaxLimit)
	if s := v.Get("sort"); s != "" {
		if sorts[s] == nil {
			return q, fmt.Errorf("sort=%q: want one of %s", s, sortKeys())
		}
		q.sort = s
	}
	return q, nil
}

func (p *pages) connz(q connQuery) *Connz {
	if q.sort == "cid" { // the default and the page's: only that page is read
		page, total := p.b.ConnectionsByID(q.offset, q.limit)
		return &Connz{Now: time.Now(), Total: total, Offset: q.offset, Limit: q.limit, Sort: q.sort, Connections: page}
	}
	listed := p.conns()
	all := listed.conns
	// Sorted by pointer: ConnInfo is large, and comparing copies would
	// allocate two per comparison.
	ptrs := make([]*broker.ConnInfo, len(all))
	for i := range all {
		ptrs[i] = &all[i]
	}
	by := sorts[q.sort]
	slices.SortFunc(ptrs, func(x, y *broker.ConnInfo) int {
		// Ties in cid order, so pages do not overlap.
		return cmp.Or(by(x, y), cmp.Compare(x.ID, y.ID))
	})
	z := &Connz{Now: listed.at, Total: len(all), Offset: q.offset, Limit: q.limit, Sort: q.sort}
	lo := min(q.offset, len(all))
	hi := lo + min(q.limit, len(all)-lo) // no overflow, whatever limit asks
	z.Connections = make([]broker.ConnInfo, 0, hi-lo)
	for _, c := range ptrs[lo:hi] {
		z.Connections = append(z.Connections, *c)
	}
	return z
}
