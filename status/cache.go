package status

import (
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

// DefaultCacheFor is how long a page's answer is shown again before it is
// computed anew. A status page reloads every RefreshSeconds and a scraper
// every few seconds, so nobody misses a second; 32 scrapers looping over
// every page made the broker's healthy deliveries wait 361 ms at p99.
const DefaultCacheFor = time.Second

// maxCached bounds the answers kept: /connz has one per offset, limit and
// sort asked; past it, answers are computed each time (still one at once).
const maxCached = 32

// answers keeps what each page computed for a short time. Requests for an
// answer being computed wait for it instead of computing it again
// (singleflight), and only one answer is computed at a time, so however
// many clients ask, pages cost about one core-millisecond each per
// interval and the broker's deliveries keep the CPU.
type answers struct {
	ttl     time.Duration
	flights singleflight.Group
	compute sync.Mutex // one computation at a time

	mu   sync.Mutex
	kept map[string]answer
}

type answer struct {
	v  any
	at time.Time
}

func newAnswers(ttl time.Duration) *answers {
	return &answers{ttl: ttl, kept: map[string]answer{}}
}

// get returns key's answer if computed within the interval, or computes,
// keeps and returns it.
func (a *answers) get(key string, compute func() any) any {
	if v, ok := a.fresh(key); ok {
		return v
	}
	v, _, _ := a.flights.Do(key, func() (any, error) {
		// A flight that ended between the check above and this one
		// has kept its answer.
		if v, ok := a.fresh(key); ok {
			return v, nil
		}
		a.compute.Lock()
		v := compute()
		a.compute.Unlock()
		a.keep(key, v)
		return v, nil
	})
	return v
}

func (a *answers) fresh(key string) (any, bool) {
	if a.ttl <= 0 {
		return nil, false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.kept[key]
	return e.v, ok && time.Since(e.at) < a.ttl
}

func (a *answers) keep(key string, v any) {
	if a.ttl <= 0 {
		return
	}
	now := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	// Expired answers go at once: a burst of distinct requests leaves
	// nothing behind once the next answer is kept.
	for k, e := range a.kept {
		if now.Sub(e.at) >= a.ttl {
			delete(a.kept, k)
		}
	}
	if len(a.kept) < maxCached {
		a.kept[key] = answer{v, now}
	}
}
