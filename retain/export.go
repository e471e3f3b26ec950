package retain

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// OpenExisting opens a store the broker made, read-only in intent: it
// neither creates the directory nor changes the stream's limits.
func OpenExisting(opts Options) (*Engine, error) {
	e := &Engine{opts: opts, channels: map[string]*Channel{}}
	e.setDefaults()
	if opts.Conn == nil {
		if _, err := os.Stat(filepath.Join(opts.Dir, marker)); err != nil {
			return nil, fmt.Errorf("directory %s is not a retained store (no %s): %w", opts.Dir, marker, err)
		}
		if err := e.startEmbedded(); err != nil {
			return nil, err
		}
	} else {
		e.nc = opts.Conn
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	js, err := jetstream.New(e.nc)
	if err == nil {
		e.js = js
		e.stream, err = js.Stream(ctx, opts.Stream)
	}
	if err != nil {
		e.Close()
		return nil, fmt.Errorf("retain: opening stream %s: %w", opts.Stream, err)
	}
	return e, nil
}

// Export calls fn with every frame of channel stored since t, oldest first.
func (e *Engine) Export(ctx context.Context, channel string, since time.Time, fn func(s Stored, frame []byte) error) error {
	c, err := e.js.OrderedConsumer(ctx, e.opts.Stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{e.opts.Subject(channel)},
		DeliverPolicy:  jetstream.DeliverByStartTimePolicy,
		OptStartTime:   &since,
	})
	if err != nil {
		return fmt.Errorf("retain: reading %s: %w", channel, err)
	}
	if c.CachedInfo().NumPending == 0 {
		return nil
	}
	for {
		m, err := c.Next(jetstream.FetchMaxWait(5 * time.Second))
		if errors.Is(err, jetstream.ErrNoMessages) || errors.Is(err, context.DeadlineExceeded) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("retain: reading %s: %w", channel, err)
		}
		md, err := m.Metadata()
		if err != nil {
			return err
		}
		data, err := unpack(nil, m.Data(), e.maxBatch())
		if err != nil {
			return fmt.Errorf("retain: reading %s at %d: %w", channel, md.Sequence.Stream, err)
		}
		s := Stored{Pos: Pos{md.Sequence.Stream, 0}, Time: md.Timestamp, Frames: appendFrames(nil, data, 0)}
		for _, f := range s.Frames {
			if err := fn(s, f); err != nil {
				return err
			}
		}
		if md.NumPending == 0 {
			return nil
		}
	}
}
