package mongostore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/auth/storetest"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
)

// writer is another program writing users, as CHN and MHN do, with the
// official driver.
func writer(t *testing.T, uri, db string) *mongo.Database {
	t.Helper()
	c, err := mongo.Connect(options.Client().ApplyURI(uri))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Disconnect(context.Background()) })
	return c.Database(db)
}

func insert(t *testing.T, c *mongo.Collection, docs ...bson.M) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, d := range docs {
		if _, err := c.InsertOne(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
}

func open(t *testing.T, uri, coll string) auth.Store {
	t.Helper()
	st, err := auth.Open(context.Background(), uri, auth.Options{Settings: []any{Settings{Collection: coll}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func TestMongoStore(t *testing.T) {
	uri, db := storetest.MongoURI(t)
	coll := writer(t, uri, db).Collection(DefaultCollection)
	st := open(t, uri, "")
	srv := brokertest.Start(t, st)
	storetest.ExpectRefused(t, srv.Addr, "sensor", "s3cret")

	// Documents written while the broker runs work at the next login.
	insert(t, coll,
		bson.M{"identifier": "sensor", "secret": "s3cret", "publish": bson.A{"events"}, "subscribe": bson.A{"events"}},
		bson.M{"identifier": "owned", "owner": "alice", "secret": "x", "publish": bson.A{}, "subscribe": bson.A{"a", "b"}},
		bson.M{"identifier": "nulls", "secret": "x", "publish": nil},
		bson.M{"identifier": "text", "secret": "x", "publish": `["t1", "t2"]`, "subscribe": ""},
		bson.M{"identifier": "nosecret", "publish": bson.A{"events"}},
	)
	storetest.ExpectLogin(t, srv.Addr, "sensor", "s3cret", "events")
	storetest.ExpectRefused(t, srv.Addr, "sensor", "wrong")
	storetest.ExpectRefused(t, srv.Addr, "unknown", "x")
	storetest.ExpectRefused(t, srv.Addr, "nosecret", "")

	if u, _ := storetest.Lookup(t, st, "sensor"); u.Owner != "sensor" {
		t.Errorf("owner %q, want the identifier", u.Owner)
	}
	if u, _ := storetest.Lookup(t, st, "owned"); u.Owner != "alice" || len(u.PubChans) != 0 || strings.Join(u.SubChans, ",") != "a,b" {
		t.Errorf("owned: %+v", u)
	}
	if u, found := storetest.Lookup(t, st, "nulls"); !found || len(u.PubChans)+len(u.SubChans) != 0 {
		t.Errorf("nulls: %+v %v", u, found)
	}
	if u, _ := storetest.Lookup(t, st, "text"); strings.Join(u.PubChans, ",") != "t1,t2" || len(u.SubChans) != 0 {
		t.Errorf("text: %+v", u)
	}

	// A corrupt document is a store error, not an unknown user.
	insert(t, coll, bson.M{"identifier": "corrupt", "secret": "x", "publish": 42})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, _, err := st.Lookup(ctx, "corrupt"); err == nil || !strings.Contains(err.Error(), "publish") {
		t.Errorf("corrupt document: %v", err)
	}
	if _, err := st.(auth.Editor).ListUsers(ctx); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Errorf("list with a corrupt document: %v", err)
	}
	if _, err := coll.DeleteOne(ctx, bson.M{"identifier": "corrupt"}); err != nil {
		t.Fatal(err)
	}

	storetest.Editor(t, st.(auth.Editor), srv.Addr)
}

// Some followed docs that named the collection auth_keys; --mongo-collection
// chooses it.
func TestMongoCollectionOption(t *testing.T) {
	uri, db := storetest.MongoURI(t)
	insert(t, writer(t, uri, db).Collection("auth_keys"),
		bson.M{"identifier": "plural", "secret": "x", "publish": bson.A{"c"}, "subscribe": bson.A{"c"}})
	if _, found := storetest.Lookup(t, open(t, uri, ""), "plural"); found {
		t.Error("default collection auth_key answered for a user kept in auth_keys")
	}
	st := open(t, uri, "auth_keys")
	if _, found := storetest.Lookup(t, st, "plural"); !found {
		t.Error("auth_keys not read")
	}

	// Chained after the default collection, the second store answers.
	chain := auth.Chain{open(t, uri, ""), st}
	srv := brokertest.Start(t, chain)
	storetest.ExpectLogin(t, srv.Addr, "plural", "x", "c")
}

// Options after the database name are the driver's, not part of the name
// (the Python broker split the URI at its last slash).
func TestMongoURIOptions(t *testing.T) {
	uri, db := storetest.MongoURI(t)
	insert(t, writer(t, uri, db).Collection(DefaultCollection), bson.M{"identifier": "sensor", "secret": "x"})
	if _, found := storetest.Lookup(t, open(t, uri+"?appName=sensor-net&connectTimeoutMS=5000&readPreference=primaryPreferred", ""), "sensor"); !found {
		t.Errorf("sensor not found in %s with URI options", db)
	}
}

// With no database in the URI path, users are read from hpfeeds.
func TestMongoDefaultDatabase(t *testing.T) {
	uri, _ := storetest.MongoURI(t)
	base := uri[:strings.LastIndex(uri, "/")+1]
	c, err := mongo.Connect(options.Client().ApplyURI(base))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Disconnect(context.Background())
	coll := c.Database(DefaultDatabase).Collection(DefaultCollection)
	ident := "default-db-" + strings.TrimPrefix(uri[len(base):], "hpfeeds_test_")
	insert(t, coll, bson.M{"identifier": ident, "secret": "x"})
	t.Cleanup(func() { coll.DeleteMany(context.Background(), bson.M{"identifier": ident}) })
	if _, found := storetest.Lookup(t, open(t, base, ""), ident); !found {
		t.Errorf("%s not found in database %s", ident, DefaultDatabase)
	}
}

// A server that goes away, loudly or silently, fails logins within the
// lookup timeout while clients logged in before are served, and logins work
// again when it returns, with no restart.
func TestMongoOutage(t *testing.T) {
	uri, db := storetest.MongoURI(t)
	insert(t, writer(t, uri, db).Collection(DefaultCollection),
		bson.M{"identifier": "sensor", "secret": "x", "publish": bson.A{"events"}, "subscribe": bson.A{"events"}})
	host, _, _ := strings.Cut(strings.TrimPrefix(uri, "mongodb://"), "/")
	proxy := storetest.NewProxy(t, host)
	storetest.Outage(t, open(t, "mongodb://"+proxy.Addr()+"/"+db, ""), proxy, "sensor", "x", "events")
}

// A reconnect storm logs everyone in: logins queue for the driver's pool.
func TestMongoLoginStorm(t *testing.T) {
	uri, db := storetest.MongoURI(t)
	insert(t, writer(t, uri, db).Collection(DefaultCollection),
		bson.M{"identifier": "sensor", "secret": "x", "publish": bson.A{"events"}, "subscribe": bson.A{"events"}})
	srv := brokertest.Start(t, open(t, uri, ""))
	storetest.LoginStorm(t, srv.Addr, "sensor", "x", "events", 400)
}

// A store that cannot be reached at start-up is not an open error (the
// database may start after the broker), and no error shows the password.
func TestMongoOpen(t *testing.T) {
	st, err := Open("mongodb://hp:s3cret@127.0.0.1:1/hpfeeds?serverSelectionTimeoutMS=200", "", nil)
	if err != nil {
		t.Fatalf("unreachable server at open: %v", err)
	}
	defer st.Close()
	if strings.Contains(st.String(), "s3cret") {
		t.Errorf("String shows the password: %s", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := st.Ping(ctx); err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("ping: %v", err)
	}
	for _, bad := range []string{"mongodb://hp:s3cret@/x", "mongodb://hp:s3cret@h/x?w=bogus&connectTimeoutMS=-1"} {
		_, err := auth.Open(context.Background(), bad, auth.Options{})
		if err == nil || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%s: %v", bad, err)
		}
	}
}

// A mongodb+srv:// URI whose SRV record cannot be resolved at start-up is
// not fatal: each lookup retries it, within the caller's deadline.
func TestMongoSRVUnresolved(t *testing.T) {
	st, err := Open("mongodb+srv://hp:s3cret@cluster0.hpfeeds-test.invalid/hpfeeds", "", nil)
	if err != nil {
		t.Fatalf("unresolvable SRV at open: %v", err)
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	_, _, err = st.Lookup(ctx, "sensor")
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("lookup: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("lookup took %v despite its 1 s deadline", d)
	}
}

// A collection with a case-insensitive default collation matches several
// spellings: each document logs in only as itself, and the duplicates are
// found as the collection compares them. FerretDB ignores collations, so
// here that is shown with identical identifiers.
func TestMongoExactIdentAndDuplicates(t *testing.T) {
	uri, db := storetest.MongoURI(t)
	coll := writer(t, uri, db).Collection(DefaultCollection)
	insert(t, coll,
		bson.M{"identifier": "Alice", "secret": "upper", "publish": bson.A{"events"}, "subscribe": bson.A{"events"}},
		bson.M{"identifier": "alice", "secret": "lower", "publish": bson.A{"events"}, "subscribe": bson.A{"events"}},
		bson.M{"identifier": "twice", "secret": "x"},
		bson.M{"identifier": "twice", "secret": "y"},
		bson.M{"secret": "no identifier"},
	)
	st := open(t, uri, "")
	srv := brokertest.Start(t, st)
	storetest.ExpectLogin(t, srv.Addr, "Alice", "upper", "events")
	storetest.ExpectLogin(t, srv.Addr, "alice", "lower", "events")
	storetest.ExpectRefused(t, srv.Addr, "ALICE", "upper")
	dups, err := st.(auth.DuplicateFinder).DuplicateIdents(context.Background())
	if err != nil || strings.Join(dups, ",") != "twice" {
		t.Errorf("duplicates %q (%v), want [twice]", dups, err)
	}
}

// unresolved is a store whose URI could not be resolved at start-up, with
// dial standing in for the DNS lookup and the client it makes.
func unresolved(dial func() (*mongo.Collection, error)) *Store {
	return &Store{spec: "mongodb://127.0.0.1:1/hpfeeds", coll: DefaultCollection, dial: dial}
}

// lazyClient makes a client without a server: the driver connects lazily.
func lazyClient(t *testing.T) *mongo.Client {
	c, err := mongo.Connect(options.Client().ApplyURI("mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=100"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// While the URI does not resolve, a login storm waits on one dial, not one
// dial (and one client) per login.
func TestMongoOneDialAtATime(t *testing.T) {
	release := make(chan struct{})
	var dials atomic.Int32
	made := lazyClient(t)
	defer made.Disconnect(context.Background())
	st := unresolved(func() (*mongo.Collection, error) {
		if dials.Add(1) == 1 {
			<-release
			return nil, &net.DNSError{Err: "no answer", Name: "cluster0.example", IsTimeout: true}
		}
		return made.Database("hpfeeds").Collection(DefaultCollection), nil
	})
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			if _, _, err := st.Lookup(ctx, "sensor"); err == nil {
				t.Error("a lookup succeeded while the URI did not resolve")
			}
		}()
	}
	wg.Wait()
	if n := dials.Load(); n != 1 {
		t.Fatalf("50 logins during a DNS outage dialed %d times, want 1", n)
	}
	close(release)
	brokertest.Eventually(t, "dialing again once the first dial failed", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := st.collection(ctx)
		return err
	})
	if n := dials.Load(); n != 2 {
		t.Errorf("%d dials, want 2", n)
	}
	st.Close()
}

// A Close while a dial is under way leaks nothing: the client that dial
// makes is disconnected, and the store answers ErrClosed.
func TestMongoCloseDuringDial(t *testing.T) {
	release := make(chan struct{})
	dialing := make(chan struct{})
	made := lazyClient(t)
	st := unresolved(func() (*mongo.Collection, error) {
		close(dialing)
		<-release
		return made.Database("hpfeeds").Collection(DefaultCollection), nil
	})
	done := make(chan error, 1)
	go func() {
		_, err := st.collection(context.Background())
		done <- err
	}()
	<-dialing
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	close(release)
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Errorf("a login waiting on the dial got %v, want ErrClosed", err)
	}
	brokertest.Eventually(t, "disconnecting the client dialed during Close", func() error {
		if err := made.Ping(context.Background(), nil); !errors.Is(err, mongo.ErrClientDisconnected) {
			return fmt.Errorf("still connected (ping: %v)", err)
		}
		return nil
	})
	if _, err := st.collection(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: %v", err)
	}
}

// Revalidation asks for many idents in one $in query.
func TestMongoLookupBatch(t *testing.T) {
	uri, db := storetest.MongoURI(t)
	coll := writer(t, uri, db).Collection(DefaultCollection)
	storetest.Batch(t, open(t, uri, ""), 1200, func(ctx context.Context, users []auth.User) error {
		docs := make([]any, len(users))
		for i, u := range users {
			docs[i] = bson.M{"identifier": u.Ident, "secret": u.Secret, "publish": u.PubChans, "subscribe": bson.A{}}
		}
		_, err := coll.InsertMany(ctx, docs)
		return err
	})
}
