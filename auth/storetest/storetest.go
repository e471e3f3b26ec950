// Package storetest holds what the credential-store tests share: logging in
// through a running broker, the editor round trip every writable store must
// pass, the service check that fails in CI and skips elsewhere, where the
// test services are (FerretDB and NATS, which `make test` starts), and a
// TCP proxy that can be cut to simulate a store going away.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
	"github.com/hpfeeds-go/hpfeeds/internal/tcpproxy"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

// RequireService fails in CI and skips elsewhere when addr does not answer;
// how says how to start the service.
func RequireService(t testing.TB, addr, how string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err == nil {
		c.Close()
		return
	}
	Missing(t, addr+" is not reachable ("+err.Error()+"); start it with: "+how)
}

// Missing fails the test in CI (CI set) and skips it elsewhere.
func Missing(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatal(why)
	}
	t.Skip(why)
}

// Login authenticates a raw client, sending frames right behind AUTH, and
// returns a reader of what the broker answers.
func Login(t testing.TB, addr, ident, secret string, frames ...[]byte) *wire.Reader {
	t.Helper()
	nc, rd, err := dialAuth(addr, ident, secret, frames...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return rd
}

// dialAuth connects, reads INFO and sends AUTH with frames behind it; the
// connection has 10 s to do all the caller wants of it.
func dialAuth(addr, ident, secret string, frames ...[]byte) (net.Conn, *wire.Reader, error) {
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, nil, err
	}
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	rd := wire.NewReader(nc, wire.UniformLimits(1<<20))
	info, err := rd.Next()
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("reading INFO: %w", err)
	}
	a, _ := wire.AppendAuth(nil, info.Payload, ident, secret)
	for _, f := range frames {
		a = append(a, f...)
	}
	if _, err := nc.Write(a); err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, rd, nil
}

// ExpectLogin checks that ident can log in, subscribe to and publish on
// channel, receiving its own message.
func ExpectLogin(t testing.TB, addr, ident, secret, channel string) {
	t.Helper()
	s, _ := wire.AppendSubscribe(nil, []byte(ident), []byte(channel))
	p, _ := wire.AppendPublish(nil, []byte(ident), []byte(channel), []byte("hello"))
	rd := Login(t, addr, ident, secret, s, p)
	f, err := rd.Next()
	if err != nil {
		t.Fatalf("%s: %v", ident, err)
	}
	if f.Op != wire.OpPublish || string(f.Payload) != "hello" {
		t.Fatalf("%s: got %v %q", ident, f.Op, f.Payload)
	}
}

// ExpectRefused checks that the login of ident is refused with the spec's text.
func ExpectRefused(t testing.TB, addr, ident, secret string) {
	t.Helper()
	rd := Login(t, addr, ident, secret)
	f, err := rd.Next()
	if err != nil {
		t.Fatalf("%s: %v", ident, err)
	}
	if f.Op != wire.OpError || string(f.Payload) != wire.AuthFailed(ident) {
		t.Fatalf("%s: got %v %q", ident, f.Op, f.Payload)
	}
}

// Lookup asks s for ident and fails the test if the store errs.
func Lookup(t testing.TB, s auth.Store, ident string) (auth.User, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	u, found, err := s.Lookup(ctx, ident)
	if err != nil {
		t.Fatalf("lookup %s: %v", ident, err)
	}
	return u, found
}

// Editor adds, lists, replaces and removes a user through e, checking each
// change is seen by the broker at addr at the next login.
func Editor(t testing.TB, e auth.Editor, addr string) {
	t.Helper()
	ctx := context.Background()
	if err := e.PutUser(ctx, auth.User{Ident: "edited", Secret: "one", PubChans: []string{"c"}, SubChans: []string{"c"}}); err != nil {
		t.Fatal(err)
	}
	ExpectLogin(t, addr, "edited", "one", "c")
	if err := e.PutUser(ctx, auth.User{Ident: "edited", Secret: "two", PubChans: []string{"d"}, SubChans: []string{"d"}}); err != nil {
		t.Fatal(err)
	}
	ExpectRefused(t, addr, "edited", "one")
	ExpectLogin(t, addr, "edited", "two", "d")
	users, err := e.ListUsers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(users, func(u auth.User) bool {
		return u.Ident == "edited" && u.Owner == "edited" && slices.Equal(u.PubChans, []string{"d"})
	}) {
		t.Errorf("edited not listed as replaced: %+v", users)
	}
	if found, err := e.DeleteUser(ctx, "edited"); !found || err != nil {
		t.Fatalf("delete: %v %v", found, err)
	}
	ExpectRefused(t, addr, "edited", "two")
	if found, _ := e.DeleteUser(ctx, "edited"); found {
		t.Error("deleted twice")
	}
}

// lookupTimeout is the broker's lookup bound in Outage: short, so that a
// login refused within it is told apart from one that waited on the store.
const lookupTimeout = 500 * time.Millisecond

// Outage runs a broker on st, which reaches its server through proxy and
// knows ident/secret with channel in its publish and subscribe lists. For a
// server that goes away loudly (Cut) and one that goes silent (Stall), it
// checks that a new login is refused with the spec's text within the lookup
// timeout and counted as error-checking-ident, that a client logged in
// before keeps being served, and that logins work again, with no restart,
// once the server is back.
func Outage(t *testing.T, st auth.Store, proxy *tcpproxy.Proxy, ident, secret, channel string) {
	t.Helper()
	srv := brokertest.Start(t, st, func(c *broker.Config) { c.LookupTimeout = lookupTimeout })
	before := dialLoggedIn(t, srv.Addr, ident, secret, channel)
	for _, fault := range []struct {
		name  string
		apply func()
	}{{"cut", proxy.Cut}, {"stall", proxy.Stall}} {
		fault.apply()
		refusedBefore := srv.Broker.Snapshot().Errors[broker.ErrorKey{Ident: "", Category: broker.CategoryErrorCheckingIdent}]
		start := time.Now()
		ExpectRefused(t, srv.Addr, ident, secret)
		if d := time.Since(start); d > lookupTimeout+2*time.Second {
			t.Errorf("%s: the login was refused after %v; the lookup timeout is %v", fault.name, d, lookupTimeout)
		}
		if n := srv.Broker.Snapshot().Errors[broker.ErrorKey{Ident: "", Category: broker.CategoryErrorCheckingIdent}]; n != refusedBefore+1 {
			t.Errorf("%s: error-checking-ident went from %d to %d, want one more", fault.name, refusedBefore, n)
		}
		before.roundTrip(t, fault.name)
		proxy.Restore()
		brokertest.Eventually(t, fault.name+": logins recovering once the server is back", func() error {
			return TryLogin(srv.Addr, ident, secret, channel)
		})
		before.roundTrip(t, fault.name+", restored")
	}
}

// loggedIn is a raw client subscribed to its own channel.
type loggedIn struct {
	nc             net.Conn
	rd             *wire.Reader
	ident, channel string
	sent           int
}

func dialLoggedIn(t *testing.T, addr, ident, secret, channel string) *loggedIn {
	t.Helper()
	sub, _ := wire.AppendSubscribe(nil, []byte(ident), []byte(channel))
	nc, rd, err := dialAuth(addr, ident, secret, sub)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	c := &loggedIn{nc: nc, rd: rd, ident: ident, channel: channel}
	c.roundTrip(t, "before the outage")
	return c
}

// roundTrip publishes a numbered message and reads it back.
func (c *loggedIn) roundTrip(t *testing.T, when string) {
	t.Helper()
	c.sent++
	want := fmt.Sprintf("message %d", c.sent)
	p, _ := wire.AppendPublish(nil, []byte(c.ident), []byte(c.channel), []byte(want))
	c.nc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.nc.Write(p); err != nil {
		t.Fatalf("%s: a client logged in before could not publish: %v", when, err)
	}
	f, err := c.rd.Next()
	for err == nil && f.Op == wire.OpPublish && string(f.Payload) == probe {
		f, err = c.rd.Next() // a recovery probe's message on the same channel
	}
	if err != nil || f.Op != wire.OpPublish || string(f.Payload) != want {
		t.Fatalf("%s: a client logged in before got %v %q (%v), want its %q", when, f.Op, f.Payload, err, want)
	}
}

// LoginStorm logs ident in n times at once and fails the test unless every
// login gets its own message back.
func LoginStorm(t testing.TB, addr, ident, secret, channel string, n int) {
	t.Helper()
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- TryLogin(addr, ident, secret, channel)
		}()
	}
	wg.Wait()
	close(errs)
	failed := 0
	for err := range errs {
		if err != nil {
			if failed == 0 {
				t.Errorf("first failed login: %v", err)
			}
			failed++
		}
	}
	if failed > 0 {
		t.Errorf("%d of %d concurrent logins failed", failed, n)
	}
}

const probe = "recovery probe"

// TryLogin logs ident in, subscribes to channel and publishes on it, and
// reports why it did not get its own message back (nil when it did).
func TryLogin(addr, ident, secret, channel string) error {
	sub, _ := wire.AppendSubscribe(nil, []byte(ident), []byte(channel))
	pub, _ := wire.AppendPublish(nil, []byte(ident), []byte(channel), []byte(probe))
	nc, rd, err := dialAuth(addr, ident, secret, sub, pub)
	if err != nil {
		return err
	}
	defer nc.Close()
	f, err := rd.Next()
	switch {
	case err != nil:
		return err
	case f.Op == wire.OpError:
		return errors.New(string(f.Payload))
	}
	return nil
}

// NewProxy forwards a free loopback port to target until the test ends;
// Cut and Restore simulate the server going away and coming back.
func NewProxy(t testing.TB, target string) *tcpproxy.Proxy {
	t.Helper()
	p, err := tcpproxy.New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// NATSEnv names the variable holding host:port of the nats-server with
// JetStream the cluster and retention tests use; `make test` starts one on a
// free port and sets it.
const NATSEnv = "HPFEEDS_TEST_NATS"

// NATS returns host:port of the nats-server the tests use: NATSEnv, else the
// machine's at 127.0.0.1:4222.
func NATS(t testing.TB) string {
	t.Helper()
	addr := os.Getenv(NATSEnv)
	if addr == "" {
		addr = "127.0.0.1:4222"
	}
	RequireService(t, addr, "make test (it starts a nats-server), or nats-server -a 127.0.0.1 -p 4222 -js, or set "+NATSEnv)
	return addr
}

// MongoEnv names the variable holding the base URI of the MongoDB-wire
// server the tests use; `make test` starts testservers/ferretdb and sets it.
const MongoEnv = "HPFEEDS_TEST_MONGODB_URI"

// MongoURI returns a mongodb:// URI for a database of its own, which is
// dropped when the test ends.
func MongoURI(t testing.TB) (uri, db string) {
	t.Helper()
	base := os.Getenv(MongoEnv)
	if base == "" {
		Missing(t, MongoEnv+" is not set: run `make test`, which builds and starts the FerretDB test server, "+
			"or start it with `make ferretdb && bin/ferretdb -dir /tmp/ferretdb` and export "+MongoEnv+"=<the URI it prints>")
	}
	host, _, _ := strings.Cut(strings.TrimPrefix(base, "mongodb://"), "/")
	RequireService(t, host[strings.LastIndex(host, "@")+1:], "make test (it starts bin/ferretdb)")
	db = fmt.Sprintf("hpfeeds_test_%d", time.Now().UnixNano())
	uri = strings.TrimSuffix(base, "/") + "/" + db
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := mongo.Connect(options.Client().ApplyURI(uri))
		if err != nil {
			t.Errorf("dropping %s: %v", db, err)
			return
		}
		defer c.Disconnect(ctx)
		if err := c.Database(db).Drop(ctx); err != nil {
			t.Errorf("dropping %s: %v", db, err)
		}
	})
	return uri, db
}

// Batch has put write n users and checks st's auth.BatchLooker answers
// for all of them at once, across several of its queries (n over 500):
// each user under its ident, an ident spelled in other case and idents
// never written left out, as Find would. put nil writes through st's
// auth.Editor.
func Batch(t testing.TB, st auth.Store, n int, put func(ctx context.Context, users []auth.User) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var users []auth.User
	var idents []string
	for i := range n {
		ident := fmt.Sprintf("batch%05d", i)
		users = append(users, auth.User{Ident: ident, Secret: "s-" + ident, PubChans: []string{"events"}})
		idents = append(idents, ident)
	}
	if put == nil {
		put = func(ctx context.Context, users []auth.User) error {
			for _, u := range users {
				if err := st.(auth.Editor).PutUser(ctx, u); err != nil {
					return err
				}
			}
			return nil
		}
	}
	if err := put(ctx, users); err != nil {
		t.Fatal(err)
	}
	asked := append(slices.Clone(idents), "BATCH00000", "never1", "never2")
	got, err := st.(auth.BatchLooker).LookupBatch(ctx, asked)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != n {
		t.Errorf("%d users found, want %d", len(got), n)
	}
	for _, ident := range idents {
		if u := got[ident]; u.Ident != ident || u.Secret != "s-"+ident || !slices.Equal(u.PubChans, []string{"events"}) {
			t.Fatalf("%s: got %+v", ident, u)
		}
	}
	if empty, err := st.(auth.BatchLooker).LookupBatch(ctx, nil); err != nil || len(empty) != 0 {
		t.Errorf("no idents: %v, %v", empty, err)
	}
}
