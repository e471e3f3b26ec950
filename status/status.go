// Package status serves what a broker is doing to people and scripts: the
// JSON endpoints /connz, /chanz and /identz (named after nats-server's), a
// status page at / built from embedded assets only, and the terminal tables
// of `hpfeeds-broker status`. Everything is computed when asked; nothing
// here runs on the publish path.
package status

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hpfeeds-go/hpfeeds/broker"
)

// DefaultStaleAfter is how long a sensor may publish nothing before it is
// shown as stale.
const DefaultStaleAfter = 15 * time.Minute

// DefaultLimit is how many connections /connz returns unless asked, as
// nats-server's.
const DefaultLimit = 1024

// Options are what the pages show besides the broker's state.
type Options struct {
	StaleAfter time.Duration // 0: DefaultStaleAfter
	Name       string        // the broker's name
	Version    string
}

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
}

// Identz is the answer of /identz.
type Identz struct {
	Now               time.Time          `json:"now"`
	StaleAfterSeconds float64            `json:"stale_after_seconds"`
	Stale             int                `json:"stale"` // how many idents are stale
	Idents            []broker.IdentInfo `json:"idents"`
}

// Mount adds /connz, /chanz, /identz and the status page / to mux.
func Mount(mux *http.ServeMux, b *broker.Broker, o Options) {
	if o.StaleAfter <= 0 {
		o.StaleAfter = DefaultStaleAfter
	}
	mux.HandleFunc("GET /connz", func(w http.ResponseWriter, r *http.Request) {
		q, err := parseConnQuery(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		writeJSON(w, connz(b, q))
	})
	mux.HandleFunc("GET /chanz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, chanz(b))
	})
	mux.HandleFunc("GET /identz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, identz(b, o.StaleAfter))
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		servePage(w, b, o)
	})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func chanz(b *broker.Broker) *Chanz {
	return &Chanz{Now: time.Now(), WindowSeconds: 60, Channels: nonNil(b.Channels())}
}

func identz(b *broker.Broker, staleAfter time.Duration) *Identz {
	z := &Identz{Now: time.Now(), StaleAfterSeconds: staleAfter.Seconds(), Idents: nonNil(b.Idents(staleAfter))}
	for _, in := range z.Idents {
		if in.Stale {
			z.Stale++
		}
	}
	return z
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
	if s := v.Get("sort"); s != "" {
		if sorts[s] == nil {
			return q, fmt.Errorf("sort=%q: want one of %s", s, sortKeys())
		}
		q.sort = s
	}
	return q, nil
}

func connz(b *broker.Broker, q connQuery) *Connz {
	all := b.Connections()
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
	z := &Connz{Now: time.Now(), Total: len(all), Offset: q.offset, Limit: q.limit, Sort: q.sort}
	lo := min(q.offset, len(all))
	hi := lo + min(q.limit, len(all)-lo) // no overflow, whatever limit asks
	z.Connections = make([]broker.ConnInfo, 0, hi-lo)
	for _, c := range ptrs[lo:hi] {
		z.Connections = append(z.Connections, *c)
	}
	return z
}
