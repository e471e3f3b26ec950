package broker

import (
	"github.com/hpfeeds-go/hpfeeds/wire"
)

// Bridge carries channels between brokers (see package cluster). The
// broker tells it which channels have local subscribers and hands it every
// message published locally; messages from other brokers come back through
// DeliverRemote. Both calls must return quickly and never block on I/O.
type Bridge interface {
	// InterestChanged says channel gained its first local subscriber or
	// lost its last; the bridge reads the current state with
	// HasSubscribers, so calls may be coalesced.
	InterestChanged(channel string)
	// Forward sends a PUBLISH frame published on this broker to the
	// others. frame is only valid during the call. unheard says no local
	// subscriber got it: the bridge calls CountUndelivered when no other
	// broker does either.
	Forward(channel string, frame []byte, unheard bool)
}

// HasSubscribers reports whether channel has local subscribers.
func (b *Broker) HasSubscribers(channel string) bool {
	t := b.topic([]byte(channel), false)
	if t == nil {
		return false
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.subs) > 0
}

// DeliverRemote delivers a PUBLISH frame that another broker accepted to
// this broker's subscribers of its channel, and never forwards it again.
// A frame that is not a well-formed PUBLISH is dropped and reported false.
func (b *Broker) DeliverRemote(frame []byte) bool {
	if len(frame) < wire.HeaderLen {
		return false
	}
	size, op, err := wire.Header(frame, &b.postAuth)
	if err != nil || op != wire.OpPublish || size != len(frame) {
		return false
	}
	f, err := wire.Decode(op, frame)
	if err != nil {
		return false
	}
	if t := b.topic(f.Channel, false); t != nil {
		t.publish(frame, len(f.Payload), nil)
	}
	return true
}

// CountUndelivered counts a message published on this broker to channel
// that reached no subscriber on any broker.
func (b *Broker) CountUndelivered(channel string) {
	if t := b.topic([]byte(channel), false); t != nil {
		t.undelivered.Add(1)
	}
}

func (b *Broker) interestChanged(channel string) {
	if b.cfg.Bridge != nil {
		b.cfg.Bridge.InterestChanged(channel)
	}
}
