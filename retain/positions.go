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

// Resume is where ident resumes channel: its saved position, or, for an
// ident with none, ReplayFirst back (ok false: start live).
func (e *Engine) Resume(ctx context.Context, ident string, ch *Channel) (p Pos, ok bool, err error) {
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
		return Pos{}, false, fmt.Errorf("retain: %s's position in %s is unreadable (%q); it starts live", ident, ch.name, v.Value())
	}
	return p, true, nil
}

// Save stores ident's position in channel.
func (e *Engine) Save(ctx context.Context, ident, channel string, p Pos) error {
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
	Next   Pos // where the following batch is looked for
}

// Read returns the first stored batch of ch at or after p; found is false
// when the store holds none. A batch the limits already dropped is
// counted (Truncated) and the next one read.
func (ch *Channel) Read(ctx context.Context, p Pos) (s Stored, found bool, err error) {
	m, err := ch.e.stream.GetMsg(ctx, p.Seq, jetstream.WithGetMsgSubject(ch.subject))
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
	s = Stored{Pos: Pos{m.Sequence, skip}, Frames: appendFrames(nil, m.Data, skip), Time: m.Time, Next: Pos{m.Sequence + 1, 0}}
	return s, true, nil
}
