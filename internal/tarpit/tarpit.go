// Package tarpit lets the exporter's handlers hold a client they refuse
// for a while before answering, so a client asking in a loop asks about
// once per hold instead of spinning on refusals (32 such clients took the
// broker's CPU from its deliveries), without keeping a connection slot
// from anyone: the server marks the connection as held, and may close it
// for a new one (metrics' slots).
package tarpit

import (
	"context"
	"net/http"
	"sync/atomic"
	"time"
)

type markKey struct{}

// WithMark returns ctx carrying the connection's mark, for the server's
// ConnContext.
func WithMark(ctx context.Context, held *atomic.Bool) context.Context {
	return context.WithValue(ctx, markKey{}, held)
}

// Hold waits d, or until the request ends (its connection closed), with
// the connection marked as held.
func Hold(r *http.Request, d time.Duration) {
	if held, ok := r.Context().Value(markKey{}).(*atomic.Bool); ok {
		held.Store(true)
		defer held.Store(false)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
	}
}
