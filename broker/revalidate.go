package broker

import (
	"context"
	"slices"
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

func (b *Broker) revalidateLoop() {
	defer b.wg.Done()
	t := time.NewTicker(b.cfg.RevalidateEvery)
	defer t.Stop()
	for {
		select {
		case <-b.ctx.Done():
			return
		case <-t.C:
			b.revalidate()
		}
	}
}

// revalidate looks up each live session's ident once and applies the
// answer to its connections. A store that cannot answer changes nothing,
// and ends the round: while it is down each lookup would wait for the
// lookup timeout. Idents are taken in random order (a map's), so one whose
// row is broken does not keep the others from their turn.
func (b *Broker) revalidate() {
	byIdent := map[string][]*conn{}
	b.mu.Lock()
	for c := range b.conns {
		if s := c.sess.Load(); s != nil {
			byIdent[s.identStr] = append(byIdent[s.identStr], c)
		}
	}
	b.mu.Unlock()
	for ident, conns := range byIdent {
		ctx, cancel := context.WithTimeout(b.ctx, b.cfg.LookupTimeout)
		u, found, err := auth.Find(ctx, b.cfg.Auth, ident) // as at login: the identifier byte for byte
		cancel()
		if b.ctx.Err() != nil {
			return
		}
		if err != nil {
			if n, ok := b.lookupFailures.due(time.Now()); ok {
				b.cfg.Logger.Warn("credential lookup failed while revalidating sessions; they stay as they are (further failures are logged at most every 10 s)",
					"ident", ident, "store", b.cfg.Auth.String(), "err", err, "failed", n)
			}
			return
		}
		for _, c := range conns {
			c.revalidate(u, found)
		}
	}
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
	c.subs = slices.DeleteFunc(c.subs, func(t *topic) bool { return !t.has(c) })
}

// has reports whether c subscribes to t.
func (t *topic) has(c *conn) bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	_, ok := t.idx[c]
	return ok
}
