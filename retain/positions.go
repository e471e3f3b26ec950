package retain

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

func posKey(ident, channel string) string {
	enc := base64.RawURLEncoding
	return "i" + enc.EncodeToString([]byte(ident)) + ".c" + enc.EncodeToString([]byte(channel))
}

// ErrBadPosition is Resume's error for a saved position that is not one:
// the store answered, so the subscriber starts live and its position is
// saved anew.
var ErrBadPosition = errors.New("unreadable")

// Resume is where ident resumes channel: its saved position, or, for an
// ident with none, ReplayFirst back (ok false: start live).
func (e *Engine) Resume(ctx context.Context, ident string, ch *Channel) (p Pos, ok bool, err error) {
	e.heal.RLock()
	defer e.heal.RUnlock()
	v, err := e.kv.Get(ctx, posKey(ident, ch.name))
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		if e.opts.ReplayFirst <= 0 {
			return Pos{}, false, nil
		}
		return e.since(ctx, ch, time.Now().Add(-e.opts.ReplayFirst))
	case err != nil:
		return Pos{}, false, fmt.Errorf("retain: reading %s's position in %s: %w", ident, ch.name, err)
	}
	seq, idx, found := strings.Cut(string(v.Value()), " ")
	p.Seq, err = strconv.ParseUint(seq, 10, 64)
	if err == nil && found {
		p.Idx, err = strconv.Atoi(idx)
	}
	if err != nil {
		return Pos{}, false, fmt.Errorf("retain: %s's position in %s is %w (%q); it starts live", ident, ch.name, ErrBadPosition, v.Value())
	}
	return p, true, nil
}

// Save stores ident's position in channel.
func (e *Engine) Save(ctx context.Context, ident, channel string, p Pos) error {
	e.heal.RLock()
	defer e.heal.RUnlock()
	_, err := e.kv.Put(ctx, posKey(ident, channel), []byte(fmt.Sprintf("%d %d", p.Seq, p.Idx)))
	if err != nil {
		return fmt.Errorf("retain: saving %s's position in %s: %w", ident, channel, err)
	}
	return nil
}

// since is the position of ch's first batch stored at t or later.
func (e *Engine) since(ctx context.Context, ch *Channel, t time.Time) (Pos, bool, error) {
	c, err := e.js.OrderedConsumer(ctx, e.opts.Stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{ch.subject},
		DeliverPolicy:  jetstream.DeliverByStartTimePolicy,
		OptStartTime:   &t,
		HeadersOnly:    true,
	})
	if err != nil {
		return Pos{}, false, fmt.Errorf("retain: finding %s's history since %s: %w", ch.name, t.Format(time.RFC3339), err)
	}
	defer e.js.DeleteConsumer(context.Background(), e.opts.Stream, c.CachedInfo().Name)
	m, err := c.Next(jetstream.FetchMaxWait(time.Second))
	if err != nil {
		return Pos{}, false, nil // nothing stored since: start live
	}
	md, err := m.Metadata()
	if err != nil {
		return Pos{}, false, err
	}
	return Pos{md.Sequence.Stream, 0}, true, nil
}

// Stored is one stored batch read back: its frames from Pos on.
type Stored struct {
	Pos    Pos // of Frames[0]
	Frames [][]byte
	Time   time.Time
	Next   Pos     // where the following batch is looked for
	buf    *[]byte // what Frames were decompressed into (see Release)
}

// Read returns the first stored batch of ch at or after p; found is false
// when the store holds none. A batch the limits already dropped is
// counted (Truncated) and the next one read. Once its frames are copied,
// s.Release lets the next Read reuse the buffer they were decompressed
// into.
func (ch *Channel) Read(ctx context.Context, p Pos) (s Stored, found bool, err error) {
	ch.e.heal.RLock()
	m, err := ch.e.stream.GetMsg(ctx, p.Seq, jetstream.WithGetMsgSubject(ch.subject))
	ch.e.heal.RUnlock()
	if isNotFound(err) {
		return s, false, nil
	}
	if err != nil {
		return s, false, fmt.Errorf("retain: reading %s at %d: %w", ch.name, p.Seq, err)
	}
	skip := 0
	if m.Sequence == p.Seq {
		skip = p.Idx
	} else if p.Idx > 0 {
		ch.e.Truncated.Add(1)
	}
	s = Stored{Pos: Pos{m.Sequence, skip}, Time: m.Time, Next: Pos{m.Sequence + 1, 0}}
	data, buf, err := unpackForReplay(m.Data, ch.e.maxBatch())
	if err != nil {
		ch.e.opts.Logger.Warn("retain: skipping a stored batch that cannot be read", "channel", ch.name, "seq", m.Sequence, "err", err)
	}
	s.Frames, s.buf = appendFrames(nil, data, skip), buf
	return s, true, nil
}

// Position is an ident's saved resume position in a channel.
type Position struct {
	Ident, Channel string
	Pos            Pos
}

// Positions lists the saved positions, at most limit of them.
func (e *Engine) Positions(ctx context.Context, limit int) ([]Position, error) {
	keys, err := e.kv.Keys(ctx)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("retain: listing positions: %w", err)
	}
	enc := base64.RawURLEncoding
	var out []Position
	for _, k := range keys[:min(len(keys), limit)] {
		i, c, ok := strings.Cut(k, ".c")
		ident, err1 := enc.DecodeString(strings.TrimPrefix(i, "i"))
		channel, err2 := enc.DecodeString(c)
		if !ok || err1 != nil || err2 != nil {
			continue
		}
		ch := e.Channel(string(channel))
		if ch == nil {
			continue // no longer retained
		}
		if p, found, err := e.Resume(ctx, string(ident), ch); err == nil && found {
			out = append(out, Position{string(ident), string(channel), p})
		}
	}
	return out, nil
}

// Usage is the JetStream account's memory and store use.
type Usage struct {
	Memory, Store uint64
	Failed        uint64 // batches the store refused
	Replayed      uint64 // frames sent to catching-up subscribers
	Truncated     uint64 // resumes from a position the limits had dropped
	Restarts      uint64 // of the embedded JetStream after a write error
}

// Usage asks JetStream what the account uses.
func (e *Engine) Usage(ctx context.Context) Usage {
	u := Usage{Failed: e.Failed.Load(), Replayed: e.Replayed.Load(), Truncated: e.Truncated.Load(),
		Restarts: e.Restarts.Load()}
	if ai, err := e.js.AccountInfo(ctx); err == nil {
		u.Memory, u.Store = ai.Memory, ai.Store
	}
	return u
}
