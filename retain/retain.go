// Package retain keeps the frames of retained hpfeeds channels in NATS
// JetStream, so a subscriber that was away can be sent what it missed.
//
// Storing one JetStream message per hpfeeds frame would cost more than the
// rest of the broker's publish path, so frames are batched per channel: a
// stored message is the PUBLISH frames of one channel side by side, as they
// went out, flushed when it reaches BatchBytes or is FlushAfter old, and
// published asynchronously, S2-compressed (packed.go). A position in a channel is (stream sequence,
// frame index in that message). Resume positions per (ident, channel) live
// in a JetStream key-value bucket beside the stream, so they survive a
// restart and are shared by every broker of a cluster.
//
// Without a NATS URL the engine runs a JetStream server inside the process
// (no listener), with its file store under Dir.
package retain

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/s2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/hpfeeds-go/hpfeeds/wire"
)

// Defaults of Options.
const (
	DefaultMaxAge     = 24 * time.Hour
	DefaultMaxBytes   = 1 << 30 // see docs/retention.md: fits a small VM's disk
	DefaultFlushAfter = 2 * time.Millisecond
	DefaultBatchBytes = 256 << 10 // larger costs less CPU per frame (docs/retention.md)
	// DefaultMaxFrame is the frame of the broker's default largest PUBLISH
	// body (broker.DefaultMaxPublishSize).
	DefaultMaxFrame = wire.HeaderLen + 1<<20
	// DefaultReplayRate bounds the bytes a second all catch-ups together
	// replay. Unbounded, one replay of 256-byte messages ran at 0.6 to 1.1
	// million a second, took most of a core and put about a quarter of the
	// live subscribers' messages past 1 ms on a 2-core machine; at about
	// this rate they still replay at some 290,000 a second, and under a
	// tenth go past 1 ms (docs/retention.md).
	DefaultReplayRate = 80 << 20
	// jsMemory bounds the embedded JetStream's memory store; the engine
	// keeps nothing there, so this is only a ceiling.
	jsMemory = 64 << 20
	// hdrRoom bounds a stored batch's headers.
	hdrRoom = 1 << 10
	// maxStoredMsg is the most the embedded server's max_payload can be
	// (its max_pending's default, which bounds it).
	maxStoredMsg = 64 << 20
	// jsStore is the embedded JetStream's store limit: the stream's
	// MaxBytes and the bucket's kvReserve bound what it keeps. A limit of
	// their sum refused to start a store whose --retain-max-bytes had been
	// lowered, since JetStream counts the recovered stream at its old
	// MaxBytes until the update (docs/retention.md).
	jsStore = 1 << 50
	// kvReserve bounds the positions bucket: at a couple of hundred bytes
	// a position (its key names the ident and the channel), some 300,000.
	kvReserve = 64 << 20
	// publishQueue bounds the batches waiting to be published, and those
	// published and not yet acknowledged: 2 MiB of full batches each. At 32
	// a fresh broker peaked 10 to 15 MiB higher on the bench's paced 1→1
	// row, with the same throughput and CPU (docs/retention.md).
	publishQueue = 8
	// ackTimeout bounds the wait for the store's acknowledgement of a
	// batch. Batches retire in order, so one never answered (JetStream
	// takes a stream offline after a write error, on a full disk) held
	// every later batch's frames in memory: 80 MB more for each 80 MB
	// published, measured on a full tmpfs (docs/retention.md).
	ackTimeout = 5 * time.Second
	marker     = "hpfeeds-retain"
)

// Options configure an Engine.
type Options struct {
	// Patterns are globs (path.Match) on channel names: a channel matching
	// one is retained.
	Patterns []string
	MaxAge   time.Duration
	MaxBytes int64
	// Dir holds the embedded JetStream's files; unused with URL.
	Dir string
	// Conn, if set, is a connection to an external NATS with JetStream
	// (cluster mode); the engine does not close it.
	Conn     *nats.Conn
	Replicas int
	// Subject maps a channel to the subject its stored batches go to; the
	// stream takes Subject("*")'s wildcard form (see cmd: cluster.Subject).
	Subject func(channel string) string
	// Wildcard is the stream's subject filter covering every Subject.
	Wildcard string
	// Stream names the stream; the positions bucket is Stream+"_POS".
	Stream string
	// ReplayFirst starts an ident with no position that far back.
	ReplayFirst time.Duration
	// ReplayRate bounds the bytes a second that every catch-up together
	// replays; negative: no bound.
	ReplayRate int64
	FlushAfter time.Duration
	BatchBytes int
	// MaxFrame is the largest frame a batch can hold (the broker's largest
	// PUBLISH frame): the embedded store takes a batch of one such frame,
	// and a stored batch claiming to decompress to more than this and
	// BatchBytes is refused as foreign or damaged.
	MaxFrame int
	Logger   *slog.Logger
}

// Engine stores retained channels. Create one with Open.
type Engine struct {
	opts   Options
	srv    *server.Server // the embedded server; nil in cluster mode
	lock   *os.File       // held on the embedded store's directory (lockDir)
	nc     *nats.Conn
	js     jetstream.JetStream
	stream jetstream.Stream
	kv     jetstream.KeyValue

	mu       sync.Mutex
	channels map[string]*Channel

	out       chan *batch   // to publishLoop
	stuck     atomic.Bool   // the store missed storeStall: drop, don't wait
	published chan struct{} // closed when publishLoop has returned

	Failed    atomic.Uint64 // batches the store refused
	failLog   atomic.Int64  // when a failure was last logged (Unix ns)
	lastFail  atomic.Pointer[failure]
	Replayed  atomic.Uint64 // frames sent from the store to catching-up subscribers
	Truncated atomic.Uint64 // resumes whose position the limits had already dropped
	Restarts  atomic.Uint64 // of the embedded JetStream after a write error (heal.go)
	acked     atomic.Uint64 // batches the store acknowledged

	// heal is held by the embedded JetStream's restart, and read-held by
	// what a restart would make fail but can wait: reading the history,
	// where it ends and the positions, saving a position.
	heal               sync.RWMutex
	healQuit, healDone chan struct{}
}

// maxBatch is the most a stored batch's frames can take.
func (e *Engine) maxBatch() int { return max(e.opts.BatchBytes, e.opts.MaxFrame) }

// StoredMax is the size of the largest message the store may be handed
// with these Options' BatchBytes and MaxFrame: a batch that does not
// compress (S2's bound), its prefix and its headers. NATS's default
// max_payload, 1 MiB, is below it for a frame of the broker's default
// largest PUBLISH.
func StoredMax(batchBytes, maxFrame int) int {
	return s2.MaxEncodedLen(max(batchBytes, maxFrame)) + len(packedMagic) + hdrRoom
}

// ReplayRate is the bytes a second every catch-up together may replay;
// 0 or less: no bound.
func (e *Engine) ReplayRate() int64 { return e.opts.ReplayRate }

// bufPool holds batch buffers of BatchBytes: a busy channel fills one per
// batch, and growing each from small would copy and discard it repeatedly.
var bufPool sync.Pool

// buffer is a batch buffer for a batch starting with a frame of n bytes.
func (e *Engine) buffer(n int) []byte {
	if n >= e.opts.BatchBytes {
		return make([]byte, 0, n)
	}
	if b, ok := bufPool.Get().(*[]byte); ok && cap(*b) >= e.opts.BatchBytes {
		return (*b)[:0]
	}
	return make([]byte, 0, e.opts.BatchBytes)
}

func (e *Engine) release(b []byte) {
	if cap(b) == e.opts.BatchBytes {
		bufPool.Put(&b)
	}
}

// CheckPatterns reports a pattern path.Match cannot use.
func CheckPatterns(patterns []string) error {
	for _, p := range patterns {
		if _, err := path.Match(p, ""); err != nil || p == "" {
			return fmt.Errorf("retain pattern %q: use a glob like dionaea.* (path.Match syntax)", p)
		}
	}
	return nil
}

// Open starts the store (embedded unless opts.Conn is set), and creates or
// updates the stream and the positions bucket.
func Open(opts Options) (*Engine, error) {
	if err := CheckPatterns(opts.Patterns); err != nil {
		return nil, err
	}
	e := &Engine{opts: opts, channels: map[string]*Channel{}}
	e.setDefaults()
	if e.opts.Conn == nil {
		if err := e.startEmbedded(); err != nil {
			return nil, err
		}
	} else {
		e.nc = e.opts.Conn
	}
	if err := e.openStream(); err != nil {
		e.Close()
		return nil, err
	}
	e.out, e.published = make(chan *batch, publishQueue), make(chan struct{})
	go e.publishLoop()
	if e.srv != nil {
		e.healQuit, e.healDone = make(chan struct{}), make(chan struct{})
		go e.healLoop(e.healQuit)
	}
	return e, nil
}

func (e *Engine) setDefaults() {
	o := &e.opts
	if o.MaxAge <= 0 {
		o.MaxAge = DefaultMaxAge
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.FlushAfter <= 0 {
		o.FlushAfter = DefaultFlushAfter
	}
	if o.BatchBytes <= 0 {
		o.BatchBytes = DefaultBatchBytes
	}
	if o.MaxFrame <= 0 {
		o.MaxFrame = DefaultMaxFrame
	}
	if o.ReplayRate == 0 {
		o.ReplayRate = DefaultReplayRate
	}
	if o.Stream == "" {
		o.Stream = "HPFEEDS_RETAIN"
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

func (e *Engine) openStream() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	js, err := jetstream.New(e.nc, jetstream.WithPublishAsyncMaxPending(publishQueue),
		jetstream.WithPublishAsyncTimeout(ackTimeout))
	if err != nil {
		return fmt.Errorf("retain: JetStream: %w", err)
	}
	e.js = js
	e.stream, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        e.opts.Stream,
		Description: "hpfeeds retained channels: batches of PUBLISH frames",
		Subjects:    []string{e.opts.Wildcard},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      e.opts.MaxAge,
		MaxBytes:    e.opts.MaxBytes,
		Storage:     jetstream.FileStorage,
		Replicas:    e.opts.Replicas,
		AllowDirect: true,
	})
	if err != nil {
		return fmt.Errorf("retain: creating stream %s (is JetStream enabled, and are there as many JetStream servers as replicas?): %w", e.opts.Stream, err)
	}
	e.kv, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      e.opts.Stream + "_POS",
		Description: "hpfeeds resume positions per ident and channel",
		History:     1,
		TTL:         4 * e.opts.MaxAge, // positions past the history are useless
		MaxBytes:    kvReserve,
		Storage:     jetstream.FileStorage,
		Replicas:    e.opts.Replicas,
	})
	if err != nil {
		return fmt.Errorf("retain: creating position bucket: %w", err)
	}
	return nil
}

// Close flushes what is batched and stops the embedded server.
func (e *Engine) Close() {
	if e.healQuit != nil {
		close(e.healQuit)
		<-e.healDone
	}
	e.mu.Lock()
	chans := make([]*Channel, 0, len(e.channels))
	for _, ch := range e.channels {
		chans = append(chans, ch)
	}
	e.mu.Unlock()
	for _, ch := range chans {
		ch.Lock()
		ch.flushLocked()
		ch.closed = true // no more flushes: out closes
		ch.Unlock()
	}
	if e.out != nil {
		close(e.out)
		<-e.published
	}
	if e.js != nil {
		select {
		case <-e.js.PublishAsyncComplete():
		case <-time.After(5 * time.Second):
		}
	}
	if e.srv != nil {
		e.nc.Close()
		e.srv.Shutdown()
		e.srv.WaitForShutdown()
		e.lock.Close()
	}
}

// Retained reports whether channel matches a pattern.
func (e *Engine) Retained(channel string) bool {
	for _, p := range e.opts.Patterns {
		if ok, _ := path.Match(p, channel); ok {
			return true
		}
	}
	return false
}

// Channel returns channel's log, or nil if channel is not retained. It
// reads the store once per channel, to know where the channel ends.
func (e *Engine) Channel(channel string) *Channel {
	if !e.Retained(channel) {
		return nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if ch := e.channels[channel]; ch != nil {
		return ch
	}
	ch := &Channel{e: e, name: channel, subject: e.opts.Subject(channel)}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if last, end, err := e.end(ctx, ch.subject); err == nil {
		ch.base = end.Seq
		if last != nil {
			frames, bytes := counts(last)
			ch.cumFrames.Store(frames)
			ch.cumBytes.Store(bytes)
		}
	} else {
		e.opts.Logger.Warn("retain: the store did not say where a retained channel's history ends; positions in it are looked up when saved",
			"channel", channel, "err", err)
	}
	e.channels[channel] = ch
	return ch
}

// end is the position after the last batch stored for subject, and that
// batch (nil if the stream holds none of subject's).
func (e *Engine) end(ctx context.Context, subject string) (*jetstream.RawStreamMsg, Pos, error) {
	e.heal.RLock()
	defer e.heal.RUnlock()
	if m, err := e.stream.GetLastMsgForSubject(ctx, subject); err == nil {
		return m, Pos{m.Sequence + 1, 0}, nil
	}
	st, err := e.stream.Info(ctx)
	if err != nil {
		return nil, Pos{}, fmt.Errorf("retain: finding where the history of %s ends: %w", subject, err)
	}
	return nil, Pos{st.State.LastSeq + 1, 0}, nil
}

// failed counts a batch the store did not take, logging at most every 10 s:
// live delivery does not depend on the store.
func (e *Engine) failed(channel string, frames int, err error) {
	n := e.Failed.Add(1)
	at := time.Now()
	e.lastFail.Store(&failure{at, err.Error()})
	now := at.UnixNano()
	last := e.failLog.Load()
	if now-last < int64(10*time.Second) || !e.failLog.CompareAndSwap(last, now) {
		return
	}
	e.opts.Logger.Warn("retain: the store refused a batch; live delivery goes on, but these frames cannot be replayed (further failures are logged at most every 10 s)",
		"channel", channel, "frames", frames, "failed_batches", n, "err", err)
}

// failure is the store's last refusal of a batch.
type failure struct {
	at  time.Time
	err string
}

// LastFailure is when the store last refused a batch, and why; zero if it
// never did.
func (e *Engine) LastFailure() (time.Time, string) {
	if f := e.lastFail.Load(); f != nil {
		return f.at, f.err
	}
	return time.Time{}, ""
}

var errNotFound = jetstream.ErrMsgNotFound

func isNotFound(err error) bool {
	return errors.Is(err, errNotFound) || err != nil && strings.Contains(err.Error(), "no message found")
}
