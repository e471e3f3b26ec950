// Package brokertest starts real brokers on loopback for tests.
package brokertest

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/broker"
)

// Server is a broker serving one endpoint.
type Server struct {
	Addr     string // host:port the endpoint is bound to
	Broker   *broker.Broker
	Listener *broker.Listener
}

// Start serves a broker on a free loopback TCP port until the test ends.
func Start(t testing.TB, store auth.Store, opts ...func(*broker.Config)) *Server {
	return StartEndpoint(t, store, "tcp:interface=127.0.0.1:port=0", opts...)
}

// StartEndpoint serves a broker on the endpoint string ep until the test
// ends. Login throttling is off unless an option turns it on.
func StartEndpoint(t testing.TB, store auth.Store, ep string, opts ...func(*broker.Config)) *Server {
	t.Helper()
	// Tests fail many logins from one address on purpose: login
	// throttling is off unless an option turns it on.
	cfg := broker.Config{Auth: store, LoginThrottle: broker.ThrottleConfig{Disabled: true}}
	for _, o := range opts {
		o(&cfg)
	}
	b, err := broker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e, err := broker.ParseEndpoint(ep)
	if err != nil {
		t.Fatal(err)
	}
	l, err := broker.Listen(context.Background(), e, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.Serve(l, e.Mode)
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := b.Shutdown(ctx); err != nil {
			t.Errorf("broker shutdown: %v", err)
		}
		l.Close()
		<-done
	})
	return &Server{Addr: l.Addr().String(), Broker: b, Listener: l}
}

// Users is an in-memory credential store, safe to change while a broker
// uses it.
type Users struct {
	mu    sync.RWMutex
	users map[string]auth.User
}

// NewUsers returns a store holding users.
func NewUsers(users ...auth.User) *Users {
	s := &Users{users: map[string]auth.User{}}
	for _, u := range users {
		s.Put(u)
	}
	return s
}

// Put adds or replaces a user, with the defaults every store applies.
func (s *Users) Put(u auth.User) {
	u = u.WithDefaults()
	s.mu.Lock()
	s.users[u.Ident] = u
	s.mu.Unlock()
}

// Delete removes ident, as `hpfeeds-broker user delete` would.
func (s *Users) Delete(ident string) {
	s.mu.Lock()
	delete(s.users, ident)
	s.mu.Unlock()
}

// Lookup implements auth.Store.
func (s *Users) Lookup(_ context.Context, ident string) (auth.User, bool, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	u, ok := s.users[ident]
	return u, ok, nil
}

func (s *Users) String() string { return "memory" }

// Close implements auth.Store.
func (s *Users) Close() error { return nil }

// Log collects what a logger writes, for tests that count log lines. It is
// safe for concurrent use.
type Log struct {
	mu sync.Mutex
	b  strings.Builder
}

// Logger returns a text logger writing to l at the default level (info).
func (l *Log) Logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, nil))
}

func (l *Log) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// Count returns how many times s occurs in what was written.
func (l *Log) Count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), s)
}

func (l *Log) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
