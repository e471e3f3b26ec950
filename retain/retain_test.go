package retain

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/wire"
)

func open(t *testing.T, dir string) *Engine {
	t.Helper()
	e, err := Open(Options{Patterns: []string{"ev*"}, Dir: dir, Wildcard: "t.*",
		Subject: func(ch string) string { return "t.c" + fmt.Sprintf("%x", ch) }, FlushAfter: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func frame(t *testing.T, n int) []byte {
	f, err := wire.AppendPublish(nil, []byte("s"), []byte("events"), []byte(fmt.Sprint(n)))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// appendN appends frames from..to-1 and waits until they are stored.
func appendN(t *testing.T, ch *Channel, from, to int) Mark {
	ch.Lock()
	for i := from; i < to; i++ {
		ch.Append(frame(t, i))
	}
	m := ch.Head()
	ch.Unlock()
	return m
}

// readAll reads every frame stored from p on, as numbers.
func readAll(t *testing.T, ch *Channel, p Pos) []string {
	var got []string
	for {
		s, found, err := ch.Read(context.Background(), p)
		if err != nil {
			t.Fatal(err)
		}
		if !found {
			return got
		}
		for _, f := range s.Frames {
			d, err := wire.Decode(wire.OpPublish, f)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, string(d.Payload))
		}
		p = s.Next
	}
}

// Frames come back in order from any position, a position survives a
// restart, and Back walks back over the frames not acknowledged.
func TestLogPositionsAndRestart(t *testing.T) {
	dir := t.TempDir()
	e := open(t, dir)
	if e.Channel("other") != nil {
		t.Fatal("a channel no pattern matches is retained")
	}
	ch := e.Channel("events")
	m := appendN(t, ch, 0, 10)
	ctx := context.Background()
	p, err := ch.Resolve(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, ch, 10, 20)
	ch.Lock()
	back := ch.Back(3 * len(frame(t, 19))) // the last three unacknowledged
	ch.Unlock()
	bp, err := ch.Resolve(ctx, back)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(readAll(t, ch, bp), ","); got != "17,18,19" {
		t.Errorf("from three frames back: %s", got)
	}
	if err := e.Save(ctx, "logger", "events", p); err != nil {
		t.Fatal(err)
	}
	e.Close()

	e = open(t, dir)
	defer e.Close()
	ch = e.Channel("events")
	got, found, err := e.Resume(ctx, "logger", ch)
	if err != nil || !found || got != p {
		t.Fatalf("position after restart: %v %v %v, want %v", got, found, err, p)
	}
	if s := strings.Join(readAll(t, ch, got), ","); s != "10,11,12,13,14,15,16,17,18,19" {
		t.Errorf("resumed with %s", s)
	}
	if _, found, _ := e.Resume(ctx, "newcomer", ch); found {
		t.Error("an ident never seen has a position")
	}
	if st := ch.Stats(ctx); st.Messages != 20 || st.Oldest.IsZero() {
		t.Errorf("stats after restart: %+v, want 20 messages", st)
	}
	if n, _ := ch.Behind(ctx, got); n != 10 {
		t.Errorf("behind %d, want 10", n)
	}
}

// The embedded JetStream restarted in place (heal.go) keeps the history
// and the positions, and stores what comes after; reads made meanwhile
// wait for it rather than fail.
func TestRestartJetStream(t *testing.T) {
	e := open(t, t.TempDir())
	defer e.Close()
	ch := e.Channel("events")
	ctx := context.Background()
	ch.Lock()
	start, err := ch.Resolve(ctx, ch.Head())
	ch.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.Resolve(ctx, appendN(t, ch, 0, 5)); err != nil {
		t.Fatal(err)
	}
	if err := e.Save(ctx, "logger", "events", start); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { e.restartJetStream(time.Now()); close(done) }()
	defer func() { <-done }()   // before Close
	for held := false; !held; { // until the restart holds heal, or is over
		select {
		case <-done:
			held = true
		default:
			if held = !e.heal.TryRLock(); !held {
				e.heal.RUnlock()
			}
		}
	}
	got := strings.Join(readAll(t, ch, start), ",")
	p, found, err := e.Resume(ctx, "logger", ch)
	<-done
	if got != "0,1,2,3,4" {
		t.Errorf("read during the restart: %q", got)
	}
	if err != nil || !found || p != start {
		t.Errorf("position during the restart: %v %v %v, want %v", p, found, err, start)
	}
	if n := e.Restarts.Load(); n != 1 {
		t.Errorf("%d restarts counted", n)
	}
	if _, err := ch.Resolve(ctx, appendN(t, ch, 5, 8)); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(readAll(t, ch, start), ","); got != "0,1,2,3,4,5,6,7" {
		t.Errorf("after the restart: %q", got)
	}
	if f := e.Failed.Load(); f != 0 {
		t.Errorf("%d batches refused after the restart", f)
	}
}

// reopened is an engine started again on a store holding frames 0 to 4
// of events; it is closed after the test.
func reopened(t *testing.T) *Engine {
	dir := t.TempDir()
	e := open(t, dir)
	if _, err := e.Channel("events").Resolve(context.Background(), appendN(t, e.Channel("events"), 0, 5)); err != nil {
		t.Fatal(err)
	}
	e.Close()
	e = open(t, dir)
	t.Cleanup(e.Close)
	return e
}

// startJetStream starts e's embedded JetStream again after a test stopped it.
func startJetStream(t *testing.T, e *Engine) {
	t.Helper()
	if err := e.srv.EnableJetStream(e.jetStreamConfig()); err != nil {
		t.Fatal(err)
	}
}

// A channel first opened while the store does not answer (NATS down in
// cluster mode, JetStream off) does not know where its log went on; a
// subscriber leaving it before anything of it is stored resumes at the
// channel's end once the store answers, not at its oldest history.
func TestChannelOpenedWhileStoreDown(t *testing.T) {
	e := reopened(t)
	if err := e.srv.ShutdownJetStream(); err != nil {
		t.Fatal(err)
	}
	ch := e.Channel("events") // the store does not answer
	startJetStream(t, e)
	ch.Lock()
	head := ch.Head()
	ch.Unlock()
	p, err := ch.Resolve(context.Background(), head)
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, ch, p); len(got) != 0 {
		t.Errorf("resuming at the head replays %v", got)
	}
	if _, err := ch.Resolve(context.Background(), appendN(t, ch, 5, 7)); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(readAll(t, ch, p), ","); got != "5,6" {
		t.Errorf("from the head: %q, want 5,6", got)
	}
}

// A subscriber that leaves with its unacknowledged frames in a batch the
// store refused, the first batch of the channel since the broker started,
// resumes after the channel's stored history, not at its oldest.
func TestFirstBatchRefused(t *testing.T) {
	e := reopened(t)
	ch := e.Channel("events")
	if err := e.srv.ShutdownJetStream(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	p, err := ch.Resolve(ctx, appendN(t, ch, 5, 7)) // refused: no JetStream
	if err != nil {
		t.Fatal(err)
	}
	if e.Failed.Load() == 0 {
		t.Fatal("the batch was not refused")
	}
	startJetStream(t, e)
	if _, err := ch.Resolve(ctx, appendN(t, ch, 7, 9)); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(readAll(t, ch, p), ","); got != "7,8" {
		t.Errorf("from the refused batch: %q, want 7,8", got)
	}
}

// Back counts a refused batch's frames, freed before the batches ahead of
// it are settled, at their size: a subscriber leaving while the store
// fails resumes where its peer stopped, not further back.
func TestBackOverRefusedBatch(t *testing.T) {
	e := open(t, t.TempDir())
	defer e.Close()
	ch := e.Channel("events")
	f := frame(t, 1)
	two := func() *batch {
		return &batch{data: slices.Concat(f, f), frames: 2, done: make(chan struct{})}
	}
	b1, refused, b3 := two(), two(), two()
	refused.failed, refused.freed, refused.data = true, len(refused.data), nil
	ch.Lock()
	ch.inflight = []*batch{b1, refused, b3}
	m := ch.Back(5 * len(f)) // b3's two frames, the refused two and b1's last
	ch.inflight = nil
	ch.Unlock()
	if m.b != b1 || m.idx != 1 {
		t.Errorf("five frames back: batch %p frame %d, want %p frame 1 (the refused batch is %p)", m.b, m.idx, b1, refused)
	}
}

// The restart is due once the store has refused batches and acknowledged
// none for healAfter, doubling after each restart until a batch is stored;
// a full disk is said once and waited out.
func TestHealerSchedule(t *testing.T) {
	t0 := time.Now()
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	h := healer{wait: healAfter}
	disk := uint64(1 << 20)
	free := func() (uint64, bool) { return disk, true }
	for i, c := range []struct {
		s             int
		failed, acked uint64
		disk          uint64
		want          healAction
	}{
		{5, 1, 0, 1 << 20, healNothing},    // failing from now
		{10, 3, 0, 1 << 20, healNothing},   // 5 s of it
		{15, 3, 0, 1 << 20, healDiskFull},  // due, no room
		{20, 3, 0, 1 << 20, healNothing},   // said once
		{25, 3, 0, 100 << 20, healRestart}, // room
		{30, 4, 0, 100 << 20, healNothing}, // refused again (or late timeouts)
		{45, 4, 0, 100 << 20, healNothing}, // 15 s of the 20 now due
		{50, 4, 0, 100 << 20, healRestart},
		{55, 4, 1, 100 << 20, healNothing}, // a batch stored: back to 10 s
		{60, 5, 1, 100 << 20, healNothing},
		{70, 5, 1, 100 << 20, healRestart},
		{75, 5, 1, 100 << 20, healNothing}, // no refusal since: nothing is due
		{500, 5, 1, 100 << 20, healNothing},
	} {
		disk = c.disk
		if got := h.check(at(c.s), c.failed, c.acked, free); got != c.want {
			t.Fatalf("check %d (at %d s): %v, want %v", i, c.s, got, c.want)
		}
	}
	unknown := func() (uint64, bool) { return 0, false }
	h = healer{wait: healAfter}
	for s, n := 0, uint64(0); h.wait < healMaxWait; s++ {
		n++
		h.check(at(s*600), n, 0, unknown)
		if h.check(at(s*600+300), n, 0, unknown) != healRestart {
			t.Fatalf("no restart %d: wait %v", s, h.wait)
		}
	}
	if h.wait != healMaxWait {
		t.Errorf("wait grew to %v, past %v", h.wait, healMaxWait)
	}
}

// Tail hands out the frames not yet stored only once the reader has read
// every stored batch.
func TestTail(t *testing.T) {
	e := open(t, t.TempDir())
	defer e.Close()
	ch := e.Channel("events")
	m := appendN(t, ch, 0, 5)
	p, err := ch.Resolve(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	ch.Lock()
	ch.Append(frame(t, 5))
	frames, ok := ch.Tail(p)
	ch.Unlock()
	if !ok || len(frames) != 1 {
		t.Fatalf("tail past the stored batches: %d frames, ok %v", len(frames), ok)
	}
	ch.Lock()
	_, ok = ch.Tail(Pos{1, 0})
	ch.Unlock()
	if ok {
		t.Error("tail before a stored batch was not refused")
	}
}

func TestCheckDir(t *testing.T) {
	foreign := t.TempDir()
	os.WriteFile(filepath.Join(foreign, "x"), nil, 0o600)
	if err := CheckDir(foreign); err == nil || !strings.Contains(err.Error(), "not a retained store") {
		t.Errorf("foreign dir: %v", err)
	}
	fresh := filepath.Join(t.TempDir(), "new")
	if err := CheckDir(fresh); err != nil {
		t.Fatal(err)
	}
	if err := CheckDir(fresh); err != nil {
		t.Errorf("a store's own dir refused: %v", err)
	}
	if err := CheckPatterns([]string{"a[", ""}); err == nil {
		t.Error("bad globs accepted")
	}
}

// JetStream's warnings reach the log, at most jsLogBurst per window: a
// full disk makes it log every batch it refuses.
func TestJSLogBounded(t *testing.T) {
	var out strings.Builder
	l := newJSLog(slog.New(slog.NewTextHandler(&out, nil)))
	for i := range 25 {
		l.Warnf("  refused batch %d", i)
	}
	if n := strings.Count(out.String(), "\n"); n != jsLogBurst {
		t.Fatalf("%d lines for 25 warnings in one window, want %d:\n%s", n, jsLogBurst, out.String())
	}
	l.window = l.window.Add(-jsLogWindow)
	out.Reset()
	l.Errorf("refused batch %d", 25)
	if got := out.String(); !strings.Contains(got, "level=ERROR") || !strings.Contains(got, `detail="refused batch 25"`) || !strings.Contains(got, "suppressed_before=15") {
		t.Fatalf("the next window's first line: %s", got)
	}
}
