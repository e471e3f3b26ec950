package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// runNATS is the same measurement on nats-server's JetStream, the anchor
// the hpfeeds row is compared with: a file-backed stream captures the
// subject -channel, a durable consumer (ack policy none, the fastest, as
// the broker saves positions without a per-message ack) is created and
// not read while -n messages are published with core NATS, then read
// (nats.go's Consume, its default batching) while live messages flow to a
// core NATS subscriber.
func runNATS(o options) (*result, error) {
	url := "nats://" + o.addr
	live := &liveSub{}
	lnc, err := nats.Connect(url)
	if err != nil {
		return nil, fmt.Errorf("live subscriber: %w", err)
	}
	defer lnc.Close()
	sub, err := lnc.Subscribe(o.channel, func(m *nats.Msg) { live.record(m.Data, time.Time{}) })
	if err != nil {
		return nil, fmt.Errorf("live subscriber: %w", err)
	}
	sub.SetPendingLimits(-1, -1) // pacing, not the client, bounds the backlog
	js, err := jetstream.New(lnc)
	if err != nil {
		return nil, err
	}
	name := "CATCHUP_" + strings.NewReplacer(".", "_", "*", "_", ">", "_").Replace(o.channel)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := js.DeleteStream(ctx, name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("deleting stream %s: %w", name, err)
	}
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{o.channel}, Storage: jetstream.FileStorage})
	if err != nil {
		return nil, fmt.Errorf("creating stream %s (is JetStream on? nats-server -js): %w", name, err)
	}
	defer js.DeleteStream(context.Background(), name)
	if _, err := stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable: o.catchup, AckPolicy: jetstream.AckNonePolicy, DeliverPolicy: jetstream.DeliverAllPolicy,
	}); err != nil {
		return nil, fmt.Errorf("creating consumer %s: %w", o.catchup, err)
	}
	pnc, err := nats.Connect(url)
	if err != nil {
		return nil, fmt.Errorf("publisher: %w", err)
	}
	defer pnc.Close()
	p := &publisher{payload: make([]byte, o.size), flush: func() {}}
	p.emit = func(payload []byte) {
		if err := pnc.Publish(o.channel, payload); err != nil {
			fmt.Fprintln(os.Stderr, "catchup: publisher:", err)
			os.Exit(2)
		}
	}
	if err := publishAway(o, p, live); err != nil {
		return nil, err
	}
	if err := waitStored(stream, uint64(o.n), o.timeout); err != nil {
		return nil, err
	}
	return replay(o, p, live, func(cs *catchSub) (func(), error) {
		nc, err := nats.Connect(url)
		if err != nil {
			return nil, err
		}
		js, err := jetstream.New(nc)
		if err != nil {
			nc.Close()
			return nil, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := js.Consumer(ctx, name, o.catchup)
		if err != nil {
			nc.Close()
			return nil, err
		}
		cc, err := c.Consume(func(m jetstream.Msg) { cs.note(m.Data()) })
		if err != nil {
			nc.Close()
			return nil, err
		}
		return func() { cc.Stop(); nc.Close() }, nil
	})
}

// waitStored waits until the stream holds n messages: core NATS publishes
// are stored asynchronously to their delivery.
func waitStored(stream jetstream.Stream, n uint64, timeout time.Duration) error {
	for end := time.Now().Add(timeout); ; {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		info, err := stream.Info(ctx)
		cancel()
		if err == nil && info.State.Msgs >= n {
			return nil
		}
		if time.Now().After(end) {
			return fmt.Errorf("the stream holds %v of %d messages after %s (err %v)", infoMsgs(info), n, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func infoMsgs(info *jetstream.StreamInfo) any {
	if info == nil {
		return "?"
	}
	return info.State.Msgs
}
