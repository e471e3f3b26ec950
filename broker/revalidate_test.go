package broker_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
)

// startRevalidating serves users with a short revalidation period, logging
// into the returned log.
func startRevalidating(t *testing.T, users auth.Store) (*brokertest.Server, *brokertest.Log) {
	log := &brokertest.Log{}
	srv := brokertest.Start(t, users, func(c *broker.Config) {
		c.RevalidateEvery = 20 * time.Millisecond
		c.Logger = log.Logger()
	})
	return srv, log
}

// A user removed from the store loses its live sessions with the error a
// failed login gets, and one log line says why.
func TestRevalidateRemovedUser(t *testing.T) {
	users := testUsers()
	srv, log := startRevalidating(t, users)
	c := brokertest.Login(t, srv.Addr, "sub", "subsecret")
	c.Sync("sub")
	other := brokertest.Login(t, srv.Addr, "pub", "pubsecret")
	other.Sync("pub")

	users.Delete("sub")
	c.ExpectError("Authentication failed for sub")
	brokertest.Eventually(t, "the disconnect line", func() bool { return log.Count("msg=disconnect ident=sub") == 1 })
	if n := log.Count(`msg="session closed: user removed from the store" ident=sub`); n != 1 {
		t.Errorf("%d lines for the removal, want 1:\n%s", n, log)
	}
	if !strings.Contains(log.String(), `reason="user removed from the store"`) {
		t.Errorf("the disconnect line does not give the reason:\n%s", log)
	}
	other.Sync("pub") // other idents are untouched
}

func TestRevalidateChangedSecret(t *testing.T) {
	users := testUsers()
	srv, log := startRevalidating(t, users)
	c := brokertest.Login(t, srv.Addr, "both", "bothsecret")
	c.Sync("both")
	users.Put(auth.User{Ident: "both", Secret: "rotated", PubChans: []string{"chan", "sync"}, SubChans: []string{"chan", "sync"}})
	c.ExpectError("Authentication failed for both")
	if n := log.Count(`msg="session closed: secret changed in the store" ident=both`); n != 1 {
		t.Errorf("%d lines for the new secret, want 1:\n%s", n, log)
	}
	brokertest.Login(t, srv.Addr, "both", "rotated").Sync("both")
}

// Narrowed channels are enforced on a live session: the subscription to a
// channel taken away is dropped, and a publish there (allowed, and cached,
// before) is refused.
func TestRevalidateNarrowedChannels(t *testing.T) {
	users := testUsers()
	srv, log := startRevalidating(t, users)
	both := brokertest.Login(t, srv.Addr, "both", "bothsecret")
	both.Send(brokertest.Subscribe(t, "both", "chan"), brokertest.Publish(t, "both", "chan", "before"))
	both.ExpectMessage("both", "chan", "before")
	both.Sync("both")
	p := brokertest.Login(t, srv.Addr, "pub", "pubsecret")

	users.Put(auth.User{Ident: "both", Secret: "bothsecret", PubChans: []string{"sync"}, SubChans: []string{"sync"}})
	brokertest.Eventually(t, "the session to follow the store", func() bool {
		return log.Count(`msg="session follows changed user in the store" ident=both`) == 1
	})
	if !strings.Contains(log.String(), "dropped_subscriptions=[chan]") {
		t.Errorf("the log line does not name the dropped subscription:\n%s", log)
	}
	p.Send(brokertest.Publish(t, "pub", "chan", "after"))
	p.Sync("pub")
	both.Sync("both")
	both.ExpectSilence()
	for _, ci := range srv.Broker.Connections() {
		if ci.Ident == "both" && slices.Contains(ci.Subscriptions, "chan") {
			t.Errorf("both still subscribed to chan: %v", ci.Subscriptions)
		}
	}
	both.Send(brokertest.Publish(t, "both", "chan", "refused"))
	both.ExpectError("Authkey not allowed to pub here. ident=both, chan=chan")
	if n := log.Count("session follows changed user"); n != 1 {
		t.Errorf("%d lines for one change, want 1:\n%s", n, log)
	}
}

// The reader and the revalidator change the same connection's
// subscriptions at once (run with -race): while the store flips a channel
// on and off, a client subscribes and unsubscribes to it as fast as it
// can. Once the store settles on "forbidden", no subscription survives.
func TestRevalidateRacesSubscribe(t *testing.T) {
	users := testUsers()
	srv, _ := startRevalidating(t, users)
	full := auth.User{Ident: "both", Secret: "bothsecret", PubChans: []string{"sync"}, SubChans: []string{"chan", "sync"}}
	narrow := auth.User{Ident: "both", Secret: "bothsecret", PubChans: []string{"sync"}, SubChans: []string{"sync"}}
	users.Put(full)
	c := brokertest.Login(t, srv.Addr, "both", "bothsecret")
	c.Sync("both")
	stop := make(chan struct{})
	flipped := make(chan struct{})
	go func() {
		defer close(flipped)
		for i := 0; ; i++ {
			select {
			case <-stop:
				users.Put(narrow)
				return
			case <-time.After(3 * time.Millisecond):
			}
			if i%2 == 0 {
				users.Put(narrow)
			} else {
				users.Put(full)
			}
		}
	}()
	deadline := time.Now().Add(500 * time.Millisecond)
	for time.Now().Before(deadline) {
		// A refused SUBSCRIBE closes the connection: log in again.
		c.Send(brokertest.Subscribe(t, "both", "chan"), brokertest.Unsubscribe(t, "both", "chan"), brokertest.Subscribe(t, "both", "chan"))
		if !syncOrClosed(c) {
			c = brokertest.Login(t, srv.Addr, "both", "bothsecret")
		}
	}
	close(stop)
	<-flipped
	brokertest.Eventually(t, "no subscription to the forbidden channel", func() bool {
		for _, ci := range srv.Broker.Connections() {
			if slices.Contains(ci.Subscriptions, "chan") {
				return false
			}
		}
		return true
	})
}

// syncOrClosed syncs, or reports that the broker closed the connection.
func syncOrClosed(c *brokertest.Client) bool {
	c.Send(brokertest.Publish(c.T, "both", "sync", "ping"))
	c.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := c.R.Next()
		if err != nil {
			return false
		}
		if brokertest.IsSync(f) {
			return true
		}
	}
}

// An operator sees each login and each disconnect at INFO, in text and in
// JSON, with the fields the issue names.
func TestLoginAndDisconnectLogLines(t *testing.T) {
	log := &brokertest.Log{}
	srv := brokertest.Start(t, testUsers(), func(c *broker.Config) {
		c.Logger = slog.New(slog.NewJSONHandler(log, nil))
	})
	c := brokertest.Login(t, srv.Addr, "both", "bothsecret")
	c.Send(brokertest.Subscribe(t, "both", "chan"), brokertest.Publish(t, "both", "chan", "x"))
	c.ExpectMessage("both", "chan", "x")
	c.Sync("both")
	c.Conn.Close()
	brokertest.Eventually(t, "the disconnect line", func() bool { return log.Count(`"msg":"disconnect"`) == 1 })
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(log.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not a JSON line: %q", l)
		}
		lines = append(lines, m)
	}
	find := func(msg string) map[string]any {
		for _, m := range lines {
			if m["msg"] == msg {
				return m
			}
		}
		t.Fatalf("no %q line in:\n%s", msg, log)
		return nil
	}
	in := find("login")
	if in["level"] != "INFO" || in["ident"] != "both" || in["owner"] != "both" ||
		!strings.HasPrefix(in["addr"].(string), "127.0.0.1:") || in["endpoint"] != "tcp:127.0.0.1:0" {
		t.Errorf("login line %v", in)
	}
	out := find("disconnect")
	// AUTH, SUBSCRIBE, PUBLISH, then sync's SUBSCRIBE and PUBLISH; out:
	// the message and the sync ping.
	if out["level"] != "INFO" || out["ident"] != "both" || out["reason"] != "closed by the client" ||
		out["frames_in"] != 5.0 || out["frames_out"] != 2.0 || out["duration"] == nil || out["addr"] != in["addr"] {
		t.Errorf("disconnect line %v", out)
	}
}

// outageStore answers from users until down is set, then fails every
// lookup, as a database that went away.
type outageStore struct {
	*brokertest.Users
	down atomic.Bool
}

func (s *outageStore) Lookup(ctx context.Context, ident string) (auth.User, bool, error) {
	if s.down.Load() {
		return auth.User{}, false, errors.New("connection refused")
	}
	return s.Users.Lookup(ctx, ident)
}

// A store that cannot answer closes no session: an outage of the database
// must not disconnect every sensor. Its failures are logged once.
func TestRevalidateStoreDownKeepsSessions(t *testing.T) {
	store := &outageStore{Users: testUsers()}
	srv, log := startRevalidating(t, store)
	c := brokertest.Login(t, srv.Addr, "both", "bothsecret")
	c.Sync("both")
	store.down.Store(true)
	brokertest.Eventually(t, "a failed revalidation", func() bool {
		return log.Count("credential lookup failed while revalidating sessions") == 1
	})
	time.Sleep(100 * time.Millisecond) // five more revalidations
	c.Send(brokertest.Subscribe(t, "both", "chan"), brokertest.Publish(t, "both", "chan", "still here"))
	c.ExpectMessage("both", "chan", "still here")
	if n := log.Count("credential lookup failed while revalidating sessions"); n != 1 {
		t.Errorf("%d lines for the outage, want 1 (then at most one per 10 s):\n%s", n, log)
	}
}

// foldStore matches idents ignoring case, as a MySQL collation does, and
// answers with the identifier as stored.
type foldStore struct {
	mu    sync.Mutex
	users map[string]auth.User // by lower-cased ident
}

func (s *foldStore) put(u auth.User) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.users[strings.ToLower(u.Ident)] = u.WithDefaults()
}

func (s *foldStore) Lookup(_ context.Context, ident string) (auth.User, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.users[strings.ToLower(ident)]
	return u, ok, nil
}

func (s *foldStore) String() string { return "fold" }
func (s *foldStore) Close() error   { return nil }

// Revalidation holds a session to its ident byte for byte, as a login is:
// once the store spells the user otherwise, the session's spelling is gone.
func TestRevalidateRespelledUser(t *testing.T) {
	users := &foldStore{users: map[string]auth.User{}}
	users.put(auth.User{Ident: "alice", Secret: "x", PubChans: []string{"sync"}, SubChans: []string{"sync"}})
	srv := brokertest.Start(t, users, func(c *broker.Config) { c.RevalidateEvery = 20 * time.Millisecond })
	c := brokertest.Login(t, srv.Addr, "alice", "x")
	c.Sync("alice")
	users.put(auth.User{Ident: "Alice", Secret: "x", PubChans: []string{"sync"}, SubChans: []string{"sync"}})
	c.ExpectError("Authentication failed for alice")
}
