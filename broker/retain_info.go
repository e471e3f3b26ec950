package broker

import (
	"context"
	"time"

	"github.com/hpfeeds-go/hpfeeds/retain"
)

// RetainedInfo is a retained channel's stored history.
type RetainedInfo struct {
	Messages         uint64    `json:"messages"`
	Bytes            uint64    `json:"bytes"`
	Oldest           time.Time `json:"oldest,omitzero"`
	OldestAgeSeconds float64   `json:"oldest_age_seconds"`
}

// RetainLag is how far an ident is behind in a retained channel: live
// (subscribed, nothing stored it has not been sent), catching-up, waiting
// (live, to be sent what it missed once the store answers; how much is
// not known meanwhile, 0), or away (not subscribed, with a saved
// position).
type RetainLag struct {
	Channel        string  `json:"channel"`
	State          string  `json:"state"`
	BehindMessages uint64  `json:"behind_messages"`
	BehindSeconds  float64 `json:"behind_seconds"`
}

// maxListedPositions bounds the saved positions one status request reads.
const maxListedPositions = 1000

// channelRetainInfo adds t's stored history to ci.
func (b *Broker) channelRetainInfo(t *topic, ci *ChannelInfo) {
	if t.ret == nil {
		return
	}
	ctx, cancel := context.WithTimeout(b.ctx, 2*time.Second)
	defer cancel()
	st := t.ret.Stats(ctx)
	ci.Retained = &RetainedInfo{Messages: st.Messages, Bytes: st.Bytes, Oldest: st.Oldest}
	if !st.Oldest.IsZero() {
		ci.Retained.OldestAgeSeconds = time.Since(st.Oldest).Seconds()
	}
}

// RetainLags is how far behind each ident is in each retained channel.
func (b *Broker) RetainLags() map[string][]RetainLag {
	e := b.cfg.Retain
	if e == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
	defer cancel()
	out := map[string][]RetainLag{}
	seen := map[[2]string]bool{}
	b.ret.mu.Lock()
	var subs []*retainSub
	for _, rcn := range b.ret.conns {
		subs = append(subs, rcn.subs...)
	}
	b.ret.mu.Unlock()
	for _, rs := range subs {
		key := [2]string{rs.ident, rs.t.name}
		if seen[key] {
			continue // another connection of the ident: the first counts
		}
		seen[key] = true
		lag := RetainLag{Channel: rs.t.name}
		switch p, state := rs.lagState(); state {
		case "catching-up":
			lag = behind(ctx, rs.t.ret, p, state)
		default:
			lag.State = state
		}
		out[rs.ident] = append(out[rs.ident], lag)
	}
	saved, err := e.Positions(ctx, maxListedPositions)
	if err != nil {
		b.cfg.Logger.Debug("retained channel: listing positions failed", "err", err)
	}
	for _, p := range saved {
		if seen[[2]string{p.Ident, p.Channel}] {
			continue
		}
		out[p.Ident] = append(out[p.Ident], behind(ctx, e.Channel(p.Channel), p.Pos, "away"))
	}
	return out
}

func behind(ctx context.Context, ch *retain.Channel, p retain.Pos, state string) RetainLag {
	n, since := ch.Behind(ctx, p)
	lag := RetainLag{Channel: ch.Name(), State: state, BehindMessages: n}
	if n > 0 && !since.IsZero() {
		lag.BehindSeconds = time.Since(since).Seconds()
	}
	return lag
}

// lagState is rs's state in RetainLag and, catching up, where it reads.
func (rs *retainSub) lagState() (retain.Pos, string) {
	rs.t.ret.Lock()
	live, pending := rs.live, rs.pending
	rs.t.ret.Unlock()
	switch {
	case pending:
		return retain.Pos{}, "waiting"
	case live:
		return retain.Pos{}, "live"
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.at, "catching-up"
}

// RetainStoreInfo is how the retained store fares: the batches it refused
// since start (their frames cannot be replayed) and the last refusal.
type RetainStoreInfo struct {
	Failures    uint64    `json:"failures"`
	LastFailure time.Time `json:"last_failure,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	// Failing: it refused a batch in the last minute.
	Failing bool `json:"failing"`
	// Restarts of the embedded JetStream after a write error.
	Restarts uint64 `json:"restarts"`
}

// RetainStore is how the retained store fares; nil without --retain.
func (b *Broker) RetainStore() *RetainStoreInfo {
	e := b.cfg.Retain
	if e == nil {
		return nil
	}
	at, err := e.LastFailure()
	return &RetainStoreInfo{Failures: e.Failed.Load(), LastFailure: at, LastError: err,
		Failing: !at.IsZero() && time.Since(at) < time.Minute, Restarts: e.Restarts.Load()}
}

// RetainUsage is the retained store's use, zero without --retain.
func (b *Broker) RetainUsage() retain.Usage {
	if b.cfg.Retain == nil {
		return retain.Usage{}
	}
	ctx, cancel := context.WithTimeout(b.ctx, 2*time.Second)
	defer cancel()
	u := b.cfg.Retain.Usage(ctx)
	return u
}

// CatchingUp is how many subscriptions are catching up now.
func (b *Broker) CatchingUp() int64 { return b.ret.catching.Load() }
