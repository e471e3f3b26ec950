// Package mongostore is the MongoDB credential store (--auth=mongodb://… or
// mongodb+srv://…), read with the official driver.
//
// Users are documents {identifier, secret, publish: [], subscribe: []} with
// an optional owner (the identifier when missing), in the collection
// auth_key of the database named by the URI path (hpfeeds when the path is
// empty). Every AUTH runs one find on the driver's pool, bounded by the
// caller's context; nothing is cached.
package mongostore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/readpref"
	"go.mongodb.org/mongo-driver/v2/x/mongo/driver/connstring"

	"github.com/hpfeeds-go/hpfeeds/auth"
)

// Defaults of the Python broker's Mongo store.
const (
	DefaultDatabase   = "hpfeeds"
	DefaultCollection = "auth_key"
)

func init() {
	open := func(_ context.Context, spec string, opts auth.Options) (auth.Store, error) {
		set, _ := auth.SettingOf[Settings](opts)
		return Open(spec, set.Collection, opts.Logger)
	}
	auth.Register("mongodb", open)
	auth.Register("mongodb+srv", open)
}

// Settings are the Mongo store's settings besides its URI; pass them to
// auth.Open in Options.Settings.
type Settings struct {
	// Collection holding users (default auth_key).
	Collection string
}

// Store is a credential store on a MongoDB collection.
type Store struct {
	spec, coll string
	log        *slog.Logger

	// dial resolves the URI and makes a client: connect, but for tests.
	dial func() (*mongo.Collection, error)

	mu     sync.Mutex
	c      *mongo.Collection // nil until the URI could be resolved
	dialed chan struct{}     // closed when the dial under way ends; nil if none
	err    error             // the last dial's error
	closed bool
}

// ErrClosed is returned by a store used after Close.
var ErrClosed = errors.New("mongostore: store closed")

// Open prepares the store for a mongodb:// or mongodb+srv:// URI. The driver
// connects lazily, so a server that is down at start-up is not an error. A
// mongodb+srv:// URI needs DNS to be parsed; if DNS does not answer, that
// too is retried at each lookup.
func Open(spec, collection string, log *slog.Logger) (*Store, error) {
	if collection == "" {
		collection = DefaultCollection
	}
	if log == nil {
		log = slog.Default()
	}
	s := &Store{spec: spec, coll: collection, log: log}
	s.dial = s.connect
	c, err := s.connect()
	var dnsErr *net.DNSError
	switch {
	case errors.As(err, &dnsErr):
		log.Warn("MongoDB URI not resolved yet; retrying at each login", "store", s.String(), "err", err)
	case err != nil:
		return nil, err
	default:
		s.c = c
	}
	return s, nil
}

func (s *Store) connect() (*mongo.Collection, error) {
	cs, err := connstring.ParseAndValidate(s.spec)
	if err != nil {
		return nil, auth.RedactError(err, s.spec)
	}
	db := cs.Database
	if db == "" {
		db = DefaultDatabase
	}
	client, err := mongo.Connect(options.Client().ApplyURI(s.spec).SetAppName("hpfeeds-broker"))
	if err != nil {
		return nil, auth.RedactError(err, s.spec)
	}
	return client.Database(db).Collection(s.coll), nil
}

// collection returns the collection, resolving the URI first if start-up
// could not. Resolving a mongodb+srv:// URI is a DNS lookup the driver does
// not bound, so it runs aside and ctx bounds the wait: a login never waits
// past its lookup timeout. One dial runs at a time, however many logins
// wait for it: a DNS outage during a login storm makes one client, not one
// per login.
func (s *Store) collection(ctx context.Context) (*mongo.Collection, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	if s.c != nil {
		c := s.c
		s.mu.Unlock()
		return c, nil
	}
	if s.dialed == nil {
		s.dialed = make(chan struct{})
		go s.resolve(s.dialed)
	}
	dialed := s.dialed
	s.mu.Unlock()
	select {
	case <-dialed:
		s.mu.Lock()
		defer s.mu.Unlock()
		switch {
		case s.closed:
			return nil, ErrClosed
		case s.c == nil:
			return nil, s.err
		}
		return s.c, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("resolving the MongoDB URI: %w", ctx.Err())
	}
}

// resolve dials once and publishes the outcome to the logins waiting on
// dialed. A client made after Close is disconnected here, not leaked.
func (s *Store) resolve(dialed chan struct{}) {
	c, err := s.dial()
	s.mu.Lock()
	closed := s.closed
	switch {
	case closed && err == nil:
		err = ErrClosed
	case err == nil:
		s.c = c
	}
	s.err = err
	s.dialed = nil
	close(dialed)
	s.mu.Unlock()
	if closed && c != nil {
		disconnect(c)
	}
}

func disconnect(c *mongo.Collection) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.Database().Client().Disconnect(ctx)
}

// doc is one user as the Python broker and its tools write it. The channel
// lists are read raw: writers have stored arrays, null, or a JSON string.
type doc struct {
	Identifier string        `bson:"identifier"`
	Owner      string        `bson:"owner,omitempty"`
	Secret     string        `bson:"secret"`
	Publish    bson.RawValue `bson:"publish,omitempty"`
	Subscribe  bson.RawValue `bson:"subscribe,omitempty"`
}

func (d *doc) user() (auth.User, error) {
	u := auth.User{Ident: d.Identifier, Owner: d.Owner, Secret: d.Secret}
	var err error
	if u.PubChans, err = channels(d.Publish); err != nil {
		return auth.User{}, fmt.Errorf("document for %q: publish: %w", d.Identifier, err)
	}
	if u.SubChans, err = channels(d.Subscribe); err != nil {
		return auth.User{}, fmt.Errorf("document for %q: subscribe: %w", d.Identifier, err)
	}
	return u.WithDefaults(), nil
}

// channels reads a list of channel names; missing or null means none.
func channels(v bson.RawValue) ([]string, error) {
	switch v.Type {
	case 0, bson.TypeNull, bson.TypeUndefined:
		return nil, nil
	case bson.TypeArray:
		var l []string
		if err := v.Unmarshal(&l); err != nil {
			return nil, fmt.Errorf("not a list of channel names: %w", err)
		}
		return l, nil
	case bson.TypeString:
		str := strings.TrimSpace(v.StringValue())
		if str == "" {
			return nil, nil
		}
		var l []string
		if err := json.Unmarshal([]byte(str), &l); err != nil {
			return nil, fmt.Errorf("a string that is not a JSON list of channel names: %w", err)
		}
		return l, nil
	}
	return nil, fmt.Errorf("a %s, not a list of channel names", v.Type)
}

// Lookup implements auth.Store.
func (s *Store) Lookup(ctx context.Context, ident string) (auth.User, bool, error) {
	c, err := s.collection(ctx)
	if err != nil {
		return auth.User{}, false, err
	}
	d, found, err := find(ctx, c, ident)
	if err != nil {
		return auth.User{}, false, auth.RedactError(err, s.spec)
	}
	if !found {
		return auth.User{}, false, nil
	}
	u, err := d.user()
	if err != nil {
		return auth.User{}, false, err
	}
	if u.Secret == "" {
		// A document without a secret can never log in; treat it as unknown.
		return auth.User{}, false, nil
	}
	return u, true, nil
}

// batchMax bounds the identifiers of one $in query.
const batchMax = 500

// LookupBatch implements auth.BatchLooker: one find with $in per batchMax
// idents. Documents spelled otherwise than asked (a collation) and
// documents without a secret are unknown, as for Lookup.
func (s *Store) LookupBatch(ctx context.Context, idents []string) (map[string]auth.User, error) {
	out := make(map[string]auth.User, len(idents))
	if len(idents) == 0 {
		return out, nil
	}
	c, err := s.collection(ctx)
	if err != nil {
		return nil, err
	}
	for len(idents) > 0 {
		n := min(len(idents), batchMax)
		if err := findBatch(ctx, c, idents[:n], out); err != nil {
			return nil, auth.RedactError(err, s.spec)
		}
		idents = idents[n:]
	}
	return out, nil
}

func findBatch(ctx context.Context, c *mongo.Collection, idents []string, out map[string]auth.User) error {
	asked := make(map[string]bool, len(idents))
	for _, ident := range idents {
		asked[ident] = true
	}
	cur, err := c.Find(ctx, bson.D{{Key: "identifier", Value: bson.D{{Key: "$in", Value: idents}}}})
	if err != nil {
		return err
	}
	defer cur.Close(ctx)
	for cur.Next(ctx) {
		var d doc
		if err := cur.Decode(&d); err != nil {
			return err
		}
		if _, dup := out[d.Identifier]; !asked[d.Identifier] || dup || d.Secret == "" {
			continue
		}
		u, err := d.user()
		if err != nil {
			return err
		}
		out[u.Ident] = u
	}
	return cur.Err()
}

// find returns the document spelled exactly as ident if there is one, else
// the first that matches: a collection with a collation that ignores case
// matches several spellings, and auth.Find refuses any but the exact one.
func find(ctx context.Context, c *mongo.Collection, ident string) (doc, bool, error) {
	cur, err := c.Find(ctx, bson.D{{Key: "identifier", Value: ident}})
	if err != nil {
		return doc{}, false, err
	}
	defer cur.Close(ctx)
	var d doc
	found := false
	for cur.Next(ctx) {
		var next doc
		if err := cur.Decode(&next); err != nil {
			return doc{}, false, err
		}
		if !found || next.Identifier == ident {
			d, found = next, true
		}
		if d.Identifier == ident {
			break
		}
	}
	return d, found, cur.Err()
}

// DuplicateIdents implements auth.DuplicateFinder; $group compares with
// the collection's default collation, as lookups do.
func (s *Store) DuplicateIdents(ctx context.Context) ([]string, error) {
	c, err := s.collection(ctx)
	if err != nil {
		return nil, err
	}
	cur, err := c.Aggregate(ctx, mongo.Pipeline{
		{{Key: "$match", Value: bson.D{{Key: "identifier", Value: bson.D{{Key: "$type", Value: "string"}}}}}},
		{{Key: "$group", Value: bson.D{{Key: "_id", Value: "$identifier"}, {Key: "n", Value: bson.D{{Key: "$sum", Value: 1}}}}}},
		{{Key: "$match", Value: bson.D{{Key: "n", Value: bson.D{{Key: "$gt", Value: 1}}}}}},
	})
	if err != nil {
		return nil, auth.RedactError(err, s.spec)
	}
	var groups []struct {
		ID string `bson:"_id"`
	}
	if err := cur.All(ctx, &groups); err != nil {
		return nil, auth.RedactError(err, s.spec)
	}
	idents := make([]string, len(groups))
	for i, g := range groups {
		idents[i] = g.ID
	}
	return idents, nil
}

func (s *Store) String() string { return auth.Redact(s.spec) }

// Ping checks the server answers.
func (s *Store) Ping(ctx context.Context) error {
	c, err := s.collection(ctx)
	if err != nil {
		return err
	}
	return auth.RedactError(c.Database().Client().Ping(ctx, readpref.Primary()), s.spec)
}

// Check implements auth.Checker: the collection exists. MongoDB creates
// one at the first insert, but a broker reading a collection nobody wrote
// to is reading the wrong one (see Settings.Collection).
func (s *Store) Check(ctx context.Context) error {
	c, err := s.collection(ctx)
	if err != nil {
		return err
	}
	names, err := c.Database().ListCollectionNames(ctx, bson.D{{Key: "name", Value: s.coll}})
	if err != nil {
		return auth.RedactError(err, s.spec)
	}
	if len(names) == 0 {
		return &auth.NotCreatedError{Spec: auth.Redact(s.spec),
			Err: fmt.Errorf("no collection %s in database %s", s.coll, c.Database().Name())}
	}
	return nil
}

// Init implements auth.Initializer: the collection, with a unique index on
// identifier so no ident has two documents. created reports whether the
// collection was new.
func (s *Store) Init(ctx context.Context) (bool, error) {
	c, err := s.collection(ctx)
	if err != nil {
		return false, err
	}
	existed := s.Check(ctx) == nil
	_, err = c.Indexes().CreateOne(ctx, mongo.IndexModel{
		Keys:    bson.D{{Key: "identifier", Value: 1}},
		Options: options.Index().SetUnique(true),
	})
	return !existed, auth.RedactError(err, s.spec)
}

// Close disconnects the pool. A dial still under way disconnects the
// client it makes when it ends.
func (s *Store) Close() error {
	s.mu.Lock()
	c := s.c
	s.c, s.closed = nil, true
	s.mu.Unlock()
	if c == nil {
		return nil
	}
	return disconnect(c)
}

// PutUser implements auth.Editor: it replaces the document of the ident,
// or inserts one.
func (s *Store) PutUser(ctx context.Context, u auth.User) error {
	c, err := s.collection(ctx)
	if err != nil {
		return err
	}
	u = u.WithDefaults()
	d := bson.D{
		{Key: "identifier", Value: u.Ident},
		{Key: "owner", Value: u.Owner},
		{Key: "secret", Value: u.Secret},
		{Key: "publish", Value: u.PubChans},
		{Key: "subscribe", Value: u.SubChans},
	}
	ids, err := exactIDs(ctx, c, u.Ident)
	switch {
	case err != nil:
	case len(ids) == 0:
		_, err = c.InsertOne(ctx, d)
	default:
		_, err = c.ReplaceOne(ctx, bson.D{{Key: "_id", Value: ids[0]}}, d)
	}
	return auth.RedactError(err, s.spec)
}

// exactIDs returns the _id of every document whose identifier is ident
// byte for byte. Writes go by _id: a filter on the identifier compares with
// the collection's default collation, and writing a user must not replace
// or delete another document it finds equal ("Alice" for "alice").
func exactIDs(ctx context.Context, c *mongo.Collection, ident string) ([]any, error) {
	cur, err := c.Find(ctx, bson.D{{Key: "identifier", Value: ident}},
		options.Find().SetProjection(bson.D{{Key: "identifier", Value: 1}}))
	if err != nil {
		return nil, err
	}
	var docs []struct {
		ID         any    `bson:"_id"`
		Identifier string `bson:"identifier"`
	}
	if err := cur.All(ctx, &docs); err != nil {
		return nil, err
	}
	var ids []any
	for _, d := range docs {
		if d.Identifier == ident {
			ids = append(ids, d.ID)
		}
	}
	return ids, nil
}

// DeleteUser implements auth.Editor.
func (s *Store) DeleteUser(ctx context.Context, ident string) (bool, error) {
	c, err := s.collection(ctx)
	if err != nil {
		return false, err
	}
	ids, err := exactIDs(ctx, c, ident)
	if err != nil || len(ids) == 0 {
		return false, auth.RedactError(err, s.spec)
	}
	res, err := c.DeleteMany(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}})
	if err != nil {
		return false, auth.RedactError(err, s.spec)
	}
	return res.DeletedCount > 0, nil
}

// ListUsers implements auth.Editor.
func (s *Store) ListUsers(ctx context.Context) ([]auth.User, error) {
	c, err := s.collection(ctx)
	if err != nil {
		return nil, err
	}
	cur, err := c.Find(ctx, bson.D{}, options.Find().SetSort(bson.D{{Key: "identifier", Value: 1}}))
	if err != nil {
		return nil, auth.RedactError(err, s.spec)
	}
	defer cur.Close(ctx)
	var users []auth.User
	for cur.Next(ctx) {
		var d doc
		if err := cur.Decode(&d); err != nil {
			return nil, err
		}
		u, err := d.user()
		if err != nil {
			return nil, err
		}
		users = append(users, u)
	}
	return users, cur.Err()
}
