package broker

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

// Sessions follow the store: every RevalidateEvery each live session's
// ident is looked up again. A removed user or a changed secret closes the
// session; changed channels replace it. The reader goroutine owns c.pubs
// and c.subs, so the revalidator only swaps the session pointer and takes
// the connection out of now-forbidden topics under their locks; the reader
// notices the new session at its next frame (follow).
//
// A round takes the idents in sorted order, revalidateBatch at a time when
// the store can batch (auth.BatchLooker), else one at a time, spread
// evenly over the period with revalidateWorkers lookups in flight at most:
// each ident is looked up about one period after its previous lookup, so a
// change reaches its sessions within RevalidateEvery plus one lookup, as
// long as a round fits in the period (ceil(idents/revalidateBatch) queries,
// revalidateWorkers at a time). A round that does not fit runs on, and the
// next starts when it ends.

const (
	revalidateBatch = 500 // idents per batched lookup
	// revalidateWorkers bounds the lookups in flight: a database+ store's
	// pool holds 10 connections, and logins need some.
	revalidateWorkers = 4
)

func (b *Broker) revalidateLoop() {
	defer b.wg.Done()
	every := b.cfg.RevalidateEvery
	next := time.Now().Add(every)
	from := ""
	for {
		select {
		case <-b.ctx.Done():
			return
		case <-time.After(time.Until(next)):
		}
		start := time.Now()
		from = b.revalidate(every, from)
		next = start.Add(every)
	}
}

// revalidate looks up each live session's ident once, spread over spread,
// and applies the answers to its connections. A lookup that fails changes
// nothing and ends the round: while the store is down each would wait for
// the lookup timeout. The next round starts after the ident that failed
// (from), so one whose row is broken does not keep the others from their
// turn. It returns where the next round starts.
func (b *Broker) revalidate(spread time.Duration, from string) string {
	byIdent := map[string][]*conn{}
	b.mu.Lock()
	for c := range b.conns {
		if s := c.sess.Load(); s != nil {
			byIdent[s.identStr] = append(byIdent[s.identStr], c)
		}
	}
	b.mu.Unlock()
	return b.revalidateRound(byIdent, spread, from)
}

// revalidateRound is revalidate for the sessions of byIdent.
func (b *Broker) revalidateRound(byIdent map[string][]*conn, spread time.Duration, from string) string {
	idents := slices.Sorted(maps.Keys(byIdent))
	i, _ := slices.BinarySearch(idents, from)
	if i < len(idents) && idents[i] == from {
		i++
	}
	idents = append(idents[i:], idents[:i]...)
	chunks := slices.Collect(slices.Chunk(idents, b.batchSize()))

	ctx, cancel := context.WithCancel(b.ctx)
	defer cancel()
	var mu sync.Mutex
	failed := ""
	jobs := make(chan []string)
	var wg sync.WaitGroup
	for range min(revalidateWorkers, len(chunks)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for chunk := range jobs {
				if at, err := b.revalidateChunk(ctx, chunk, byIdent); err != nil && ctx.Err() == nil {
					mu.Lock()
					failed = at
					mu.Unlock()
					cancel()
				}
			}
		}()
	}
	start := time.Now()
	for n, chunk := range chunks {
		select {
		case <-ctx.Done():
		case <-time.After(time.Until(start.Add(spread * time.Duration(n) / time.Duration(len(chunks))))):
			select {
			case jobs <- chunk:
			case <-ctx.Done():
			}
		}
	}
	close(jobs)
	wg.Wait()
	return failed
}

// batchSize is how many idents one lookup takes: revalidateBatch if the
// store batches (asking for none is how it tells), else one.
func (b *Broker) batchSize() int {
	if bl, ok := b.cfg.Auth.(auth.BatchLooker); ok {
		if _, err := bl.LookupBatch(b.ctx, nil); err == nil {
			return revalidateBatch
		}
	}
	return 1
}

// revalidateChunk looks idents up, in one batch if it can, else one by
// one, and applies the answers. It returns the ident whose lookup failed.
func (b *Broker) revalidateChunk(ctx context.Context, idents []string, byIdent map[string][]*conn) (string, error) {
	if len(idents) > 1 {
		lctx, cancel := context.WithTimeout(ctx, b.cfg.LookupTimeout)
		users, err := b.cfg.Auth.(auth.BatchLooker).LookupBatch(lctx, idents)
		cancel()
		if err == nil {
			for _, ident := range idents {
				u, found := users[ident]
				for _, c := range byIdent[ident] {
					c.revalidate(u, found)
				}
			}
			return "", nil
		}
		// A corrupt row fails its whole batch: ask one by one to find it.
	}
	for _, ident := range idents {
		lctx, cancel := context.WithTimeout(ctx, b.cfg.LookupTimeout)
		u, found, err := auth.Find(lctx, b.cfg.Auth, ident) // as at login: the identifier byte for byte
		cancel()
		if err != nil {
			if n, ok := b.lookupFailures.due(time.Now()); ok && ctx.Err() == nil {
				b.cfg.Logger.Warn("credential lookup failed while revalidating sessions; they stay as they are (further failures are logged at most every 10 s)",
					"ident", ident, "store", b.cfg.Auth.String(), "err", err, "failed", n)
			}
			return ident, err
		}
		for _, c := range byIdent[ident] {
			c.revalidate(u, found)
		}
	}
	return "", nil
}

func (c *conn) revalidate(u auth.User, found bool) {
	s := c.sess.Load()
	ns := newSession(u)
	switch {
	case !found:
		c.revoke(s, "user removed from the store")
	case ns.secret != s.secret:
		c.revoke(s, "secret changed in the store")
	case ns.owner != s.owner || !slices.Equal(ns.pub, s.pub) || !slices.Equal(ns.sub, s.sub):
		c.changeSession(s, ns)
	}
}

// revoke closes the session with the error a failed login gets.
func (c *conn) revoke(s *session, why string) {
	c.b.cfg.Logger.Info("session closed: "+why, "ident", s.identStr, "addr", c.addr)
	c.close(closedRevoked, why, wire.AppendError(nil, wire.AuthFailed(s.identStr)))
}

// changeSession stores the session with the store's channels and takes the
// connection out of the topics it may no longer subscribe to. A subscribe
// racing with this rechecks the session after adding itself (subscribe).
func (c *conn) changeSession(old, ns *session) {
	c.sess.Store(ns)
	var dropped []string
	for _, t := range c.b.topicList() {
		if slices.Contains(ns.sub, t.name) || !t.has(c) {
			continue
		}
		if t.remove(c) {
			c.b.interestChanged(t.name)
		}
		dropped = append(dropped, t.name)
	}
	slices.Sort(dropped)
	c.b.mu.Lock()
	if r := c.b.idents[ns.identStr]; r != nil {
		r.owner, r.publisher = ns.owner, len(ns.pub) > 0
	}
	c.b.mu.Unlock()
	c.b.cfg.Logger.Info("session follows changed user in the store", "ident", ns.identStr,
		"addr", c.addr, "owner", ns.owner, "pubchans", ns.pub, "subchans", ns.sub,
		"dropped_subscriptions", dropped)
}

// follow brings the reader's state in line with a session revalidation
// stored: publishes to channels no longer allowed are refused, and
// subscriptions revalidation removed are forgotten.
func (c *conn) follow(s *session) {
	c.checked = s
	for name, p := range c.pubs {
		p.revoked = !slices.Contains(s.pub, name)
	}
	c.editSubs(func(subs []*topic) []*topic {
		return slices.DeleteFunc(subs, func(t *topic) bool { return !t.has(c) })
	})
}

// has reports whether c subscribes to t.
func (t *topic) has(c *conn) bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	_, ok := t.idx[c]
	return ok
}
