package broker_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

// rttStore answers after one round trip to a database, as many lookups
// as it is asked at once.
type rttStore struct {
	*brokertest.Users
	rtt   atomic.Int64 // time.Duration
	calls atomic.Int64 // queries, batched or not
}

func (s *rttStore) wait() {
	s.calls.Add(1)
	time.Sleep(time.Duration(s.rtt.Load()))
}

func (s *rttStore) Lookup(ctx context.Context, ident string) (auth.User, bool, error) {
	s.wait()
	return s.Users.Lookup(ctx, ident)
}

func (s *rttStore) LookupBatch(ctx context.Context, idents []string) (map[string]auth.User, error) {
	if len(idents) > 0 {
		s.wait()
	}
	out := map[string]auth.User{}
	for _, ident := range idents {
		if u, ok, _ := s.Users.Lookup(ctx, ident); ok {
			out[ident] = u
		}
	}
	return out, nil
}

// 1,000 live sessions, one ident each, on a store 20 ms away (a round
// trip), revalidated every 500 ms: a round used to look them up one after
// another, 20 s a round. Ten users removed together lose their sessions
// within the period (plus a lookup and slack for a loaded machine), and the
// store is asked a few queries a round, not one per ident.
func TestRevalidateAtScale(t *testing.T) {
	const (
		n      = 1000
		every  = 500 * time.Millisecond
		rtt    = 20 * time.Millisecond
		remove = 10
	)
	store := &rttStore{Users: brokertest.NewUsers()}
	for i := range n {
		store.Put(auth.User{Ident: fmt.Sprintf("s%04d", i), Secret: "x", PubChans: []string{"sync"}, SubChans: []string{"sync"}})
	}
	srv := brokertest.Start(t, auth.Chain{store}, func(c *broker.Config) { c.RevalidateEvery = every })
	clients := make([]*brokertest.Client, n)
	for i := range n {
		clients[i] = brokertest.Login(t, srv.Addr, fmt.Sprintf("s%04d", i), "x")
	}
	brokertest.Eventually(t, "every client logged in", func() bool {
		live := 0
		for _, conns := range srv.Broker.Snapshot().Owners {
			live += conns
		}
		return live == n
	})
	store.rtt.Store(int64(rtt))
	time.Sleep(every) // let a slow round start
	calls := store.calls.Load()
	start := time.Now()
	for i := range remove {
		store.Delete(fmt.Sprintf("s%04d", i*n/remove+7))
	}
	var last time.Duration
	for i := range remove {
		ident := fmt.Sprintf("s%04d", i*n/remove+7)
		clients[i*n/remove+7].ExpectError(wire.AuthFailed(ident))
		last = time.Since(start)
	}
	queries := store.calls.Load() - calls
	t.Logf("the last of %d removed users was cut off after %v; %d queries meanwhile", remove, last, queries)
	if limit := every + time.Second; last > limit {
		t.Errorf("removed users were cut off after %v, want within the period and a lookup (%v, with slack)", last, limit)
	}
	// Two batches of 500 a round, for as many rounds as the wait saw.
	if rounds := int64(last/every) + 2; queries > 2*rounds+2 {
		t.Errorf("%d queries in %v for %d idents, want about 2 a round (batched)", queries, last, n)
	}
}

// brokenRowStore fails every lookup that touches one ident, as a row with
// a corrupt channel list does, batched or not.
type brokenRowStore struct {
	*brokertest.Users
	broken string
	on     atomic.Bool
}

func (s *brokenRowStore) Lookup(ctx context.Context, ident string) (auth.User, bool, error) {
	if ident == s.broken && s.on.Load() {
		return auth.User{}, false, fmt.Errorf("row for %q: not a JSON list", ident)
	}
	return s.Users.Lookup(ctx, ident)
}

func (s *brokenRowStore) LookupBatch(ctx context.Context, idents []string) (map[string]auth.User, error) {
	out := map[string]auth.User{}
	for _, ident := range idents {
		u, ok, err := s.Lookup(ctx, ident)
		if err != nil {
			return nil, err
		}
		if ok {
			out[ident] = u
		}
	}
	return out, nil
}

// A broken row fails its batch; its idents are then asked one by one, and
// the rounds move past it, so users before and after it in the batch are
// still revalidated.
func TestRevalidateBrokenRowInBatch(t *testing.T) {
	users := brokertest.NewUsers()
	for _, id := range []string{"aa", "mm", "zz"} {
		users.Put(auth.User{Ident: id, Secret: "x", PubChans: []string{"sync"}, SubChans: []string{"sync"}})
	}
	store := &brokenRowStore{Users: users, broken: "mm"}
	srv, _ := startRevalidating(t, auth.Chain{store})
	var clients []*brokertest.Client
	for _, id := range []string{"aa", "mm", "zz"} {
		c := brokertest.Login(t, srv.Addr, id, "x")
		c.Sync(id)
		clients = append(clients, c)
	}
	store.on.Store(true)
	users.Delete("aa")
	users.Delete("zz")
	clients[0].ExpectError(wire.AuthFailed("aa"))
	clients[2].ExpectError(wire.AuthFailed("zz"))
	clients[1].Send(brokertest.Publish(t, "mm", "sync", "still here"))
	clients[1].Sync("mm")
}
