package main

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sys/unix"

	"github.com/hpfeeds-go/hpfeeds/auth/storetest"
	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
)

// Retention tests: real broker processes, real sockets. Payloads are
// "<n> " and padding, so a message's bytes follow from its number.

const retainPad = 200

func retainPayload(n int) string {
	s := strconv.Itoa(n) + " "
	return s + strings.Repeat("x", retainPad-len(s))
}

// pacedPublisher publishes numbered messages on events at about rate per
// second until stopped; it returns how many it published.
type pacedPublisher struct {
	t    *testing.T
	c    *wireClient
	err  error // why it stopped early; read after done
	n    atomic.Int64
	stop chan struct{}
	done chan struct{}
}

func startPublisher(t *testing.T, addr, ident string, rate int) *pacedPublisher {
	p := &pacedPublisher{t: t, c: dialAs(t, addr, ident), stop: make(chan struct{}), done: make(chan struct{})}
	p.c.Conn.SetWriteDeadline(time.Time{}) // it publishes for longer than Login's 10 s
	go func() {
		defer close(p.done)
		start := time.Now()
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-tick.C:
			}
			// Up to the count due by now: a late tick does not lower the rate.
			for p.n.Load() < int64(time.Since(start).Seconds()*float64(rate)) {
				if p.err = p.c.publish(retainPayload(int(p.n.Load()))); p.err != nil {
					return
				}
				p.n.Add(1)
			}
		}
	}()
	return p
}

func (p *pacedPublisher) finish() int {
	close(p.stop)
	<-p.done
	if p.err != nil {
		p.t.Fatalf("the publisher stopped after %d messages: %v", p.n.Load(), p.err)
	}
	return int(p.n.Load())
}

// reader reads numbered messages, checking each is byte-exact.
type reader struct {
	t    *testing.T
	c    *wireClient
	next int // the number expected next
}

// read reads one message and returns its number.
func (r *reader) read(wait time.Duration) (int, bool) {
	r.t.Helper()
	_, payload, ok := r.c.next(wait)
	for ok && strings.HasPrefix(payload, "probe-") {
		_, payload, ok = r.c.next(wait)
	}
	if !ok {
		return 0, false
	}
	num, _, _ := strings.Cut(payload, " ")
	n, err := strconv.Atoi(num)
	if err != nil || payload != retainPayload(n) {
		r.t.Fatalf("message not byte-exact: %.40q", payload)
	}
	return n, true
}

// until reads in order up to message last, failing on a gap or reorder.
func (r *reader) until(last int) {
	r.t.Helper()
	for r.next <= last {
		n, ok := r.read(10 * time.Second)
		if !ok {
			r.t.Fatalf("got messages up to %d of %d, then nothing", r.next-1, last)
		}
		if n != r.next {
			r.t.Fatalf("got message %d, want %d (in order, no gap)", n, r.next)
		}
		r.next++
	}
}

// cutAbruptly closes the subscriber's socket with a reset, as the kernel
// does for a killed process with unread data, and returns the bytes it
// had received and not read: the receive queue and the reader's buffer.
func cutAbruptly(t *testing.T, c *wireClient) (unread int) {
	tc := c.Conn.(*net.TCPConn)
	rc, err := tc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	rc.Control(func(fd uintptr) {
		unread, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
	})
	unread += len(c.R.Pending())
	tc.SetLinger(0)
	tc.Close()
	return unread
}

func retainBroker(t *testing.T, dir string, args ...string) *clusterBroker {
	return startClusterBroker(t, append([]string{"--retain=events,other.*", "--retain-dir=" + dir}, args...)...)
}

// A subscriber cut off abruptly while 2,000 msg/s flow, kept down 30 s
// (beside the other long tests: t.Parallel), then reconnecting, gets every message after those the client had
// consumed, in order and byte-exact. Messages can be lost only from the
// bytes it had received and not read (its receive buffer), and are sent
// twice only past those.
func TestRetainResumeAfterCut(t *testing.T) {
	clusterUser("rlogger")
	clusterUser("rsensor")
	t.Parallel()
	b := retainBroker(t, t.TempDir())
	sub := dialAs(t, b.addr, "rlogger", "events")
	pub := startPublisher(t, b.addr, "rsensor", 2000)
	r := &reader{t: t, c: sub}
	n, ok := r.read(5 * time.Second)
	if !ok {
		t.Fatal("no live message")
	}
	r.next = n + 1
	r.until(n + 2000) // a second of live traffic
	unread := cutAbruptly(t, sub)
	consumed := r.next - 1
	time.Sleep(30 * time.Second)

	sub2 := resubscribe(t, b.addr, "rlogger")
	r2 := &reader{t: t, c: sub2}
	first, ok := r2.read(10 * time.Second)
	if !ok {
		t.Fatal("nothing after reconnecting")
	}
	lost := max(0, first-consumed-1)
	dups := max(0, consumed+1-first)
	if lost*(4+2+len("rsensor")+len("events")+1+retainPad) > unread {
		t.Fatalf("lost %d messages at the cut, more than the %d bytes the client had not read", lost, unread)
	}
	r2.next = first + 1
	total := pub.finish()
	r2.until(total - 1)
	t.Logf("cut after message %d with %d bytes unread by the client: resumed at %d (%d lost, %d sent twice); %d messages, all in order",
		consumed, unread, first, lost, dups, total)
}

// missWhileAway subscribes logger to events on addr, makes sure sensor's
// messages reach it, closes it (its position saved), then publishes n
// numbered messages as sensor and waits until the broker has read them.
func missWhileAway(t *testing.T, addr, logger, sensor string, n int) {
	t.Helper()
	sub := dialAs(t, addr, logger, "events")
	pub := dialAs(t, addr, sensor)
	linked(t, pub, sub)
	sub.Conn.Close()
	time.Sleep(200 * time.Millisecond) // the position is saved after the close
	for i := range n {
		if err := pub.publish(retainPayload(i)); err != nil {
			t.Fatal(err)
		}
	}
	pub.SubscribeOwn(sensor) // the broker has read them all
}

// missedThenStopped runs a test beside the others (t.Parallel) with a
// retaining broker on a new directory, where logger misses n messages of
// sensor's; it stops the broker with sig and returns the directory.
func missedThenStopped(t *testing.T, logger, sensor string, n int, sig syscall.Signal) string {
	t.Helper()
	clusterUser(logger)
	clusterUser(sensor)
	t.Parallel() // after clusterUser: it appends to a shared list
	dir := t.TempDir()
	b := retainBroker(t, dir)
	missWhileAway(t, b.addr, logger, sensor, n)
	time.Sleep(100 * time.Millisecond) // the last batch stored
	b.cmd.Process.Signal(sig)
	b.cmd.Wait()
	return dir
}

// A subscriber that left cleanly gets, after kill -9 of the broker and a
// restart on the same --retain-dir, what was published while it was away.
func TestRetainSurvivesKill9(t *testing.T) {
	dir := missedThenStopped(t, "klogger", "ksensor", 500, syscall.SIGKILL)
	b2 := retainBroker(t, dir)
	sub2 := resubscribe(t, b2.addr, "klogger")
	r := &reader{t: t, c: sub2}
	r.until(499)
}

// A broker restarted with a smaller --retain-max-bytes than the store was
// made with starts (it refused to, with "insufficient storage resources"),
// and a subscriber resumes from its saved position.
func TestRetainLimitLowered(t *testing.T) {
	dir := missedThenStopped(t, "mlogger", "msensor", 100, syscall.SIGTERM) // the default limit, 1 GiB
	b2 := retainBroker(t, dir, "--retain-max-bytes=1MiB")
	r := &reader{t: t, c: resubscribe(t, b2.addr, "mlogger")}
	r.until(99)
}

// A damaged store: JetStream's own warnings reach the broker's log, and
// live delivery goes on with what it could read; a store it cannot open
// at all stops the start-up at once with one line giving its reason.
func TestRetainDamagedStore(t *testing.T) {
	dir := missedThenStopped(t, "dlogger", "dsensor", 50, syscall.SIGTERM)
	block := filepath.Join(dir, "jetstream", "$G", "streams", "HPFEEDS_RETAIN", "msgs", "1.blk")
	garbage := bytes.Repeat([]byte("not a block "), 30)
	if err := os.WriteFile(block, garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	b2 := retainBroker(t, dir)
	warned := false
	for _, l := range b2.startLog {
		warned = warned || strings.Contains(l, "level=WARN") && strings.Contains(l, "retain: embedded JetStream")
	}
	if !warned {
		t.Errorf("no warning from JetStream about the damaged block; the broker logged:\n%s", strings.Join(b2.startLog, "\n"))
	}
	sub := dialAs(t, b2.addr, "dlogger", "events")
	linked(t, dialAs(t, b2.addr, "dsensor"), sub)

	b2.cmd.Process.Signal(syscall.SIGTERM)
	b2.cmd.Wait()
	if err := os.RemoveAll(filepath.Join(dir, "jetstream")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "jetstream"), garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	code, out := run(t, nil, "--auth=env", "-e", "tcp:interface=127.0.0.1:port=0", "--retain=events", "--retain-dir="+dir)
	if lines := strings.Split(strings.TrimSpace(out), "\n"); code == 0 || len(lines) != 1 || !strings.Contains(out, "cannot use "+dir) || !strings.Contains(out, "not a directory") {
		t.Errorf("a store JetStream cannot open: exit %d, output:\n%s\nwant one line giving its reason", code, out)
	}
}

// The largest PUBLISH a default broker takes, in random bytes that do not
// compress, is retained and replayed whole: the stored batch is larger
// than NATS's default max_payload, which the embedded store raises for it.
func TestRetainLargestMessage(t *testing.T) {
	clusterUser("llogger")
	clusterUser("lsensor")
	t.Parallel() // after clusterUser: it appends to a shared list
	b := retainBroker(t, t.TempDir())
	sub := dialAs(t, b.addr, "llogger", "events")
	pub := dialAs(t, b.addr, "lsensor")
	linked(t, pub, sub)
	sub.Conn.Close()
	time.Sleep(200 * time.Millisecond) // the position is saved after the close
	big := make([]byte, broker.DefaultMaxPublishSize-2-len("lsensor")-len("events"))
	crand.Read(big)
	for _, p := range []string{string(big), "after"} {
		if err := pub.publish(p); err != nil {
			t.Fatal(err)
		}
	}
	pub.SubscribeOwn("lsensor") // the broker has read them
	sub2 := resubscribe(t, b.addr, "llogger")
	for _, want := range []string{string(big), "after"} {
		if _, got, ok := sub2.next(10 * time.Second); !ok || got != want {
			t.Fatalf("replayed %d bytes (%v), want %d", len(got), ok, len(want))
		}
	}
	if n := b.metric(t, "hpfeeds_broker_retain_store_failures_total"); n != 0 {
		t.Errorf("%v batches refused by the store", n)
	}
}

// --check-config with --retain and --cluster: a NATS without JetStream is
// an error, one with NATS's default max_payload a warning (a message of
// the largest PUBLISH that does not compress would not be retained).
func TestRetainClusterChecks(t *testing.T) {
	base := []string{"--auth=env", "-e", "tcp:interface=127.0.0.1:port=0", "--check-config", "--retain=events"}
	plain, _ := startNATS(t)
	code, out := run(t, nil, append(base, "--cluster=nats://"+plain)...)
	if lines := strings.Split(strings.TrimSpace(out), "\n"); code == 0 || len(lines) != 1 || !strings.Contains(out, "no JetStream") {
		t.Errorf("a NATS without JetStream: exit %d, output:\n%s\nwant one line saying so", code, out)
	}
	js, _ := startNATS(t, "-js", "-sd", t.TempDir())
	code, out = run(t, nil, append(base, "--cluster=nats://"+js)...)
	if code != 0 || !strings.Contains(out, "warning") || !strings.Contains(out, "max_payload=1048576") {
		t.Errorf("a NATS with the default max_payload: exit %d: %s", code, out)
	}
}

// --retain-replay-rate bounds catch-up: 3 MiB missed, replayed at 1 MiB/s,
// cannot arrive in less than about 2.75 s (all but the first 256 KiB batch
// wait their turn). Only that lower bound is checked, which no load on
// the machine can break; the default rate, 80 MiB/s, replays it in tens of
// milliseconds.
func TestRetainReplayRate(t *testing.T) {
	clusterUser("plogger")
	clusterUser("psensor")
	t.Parallel() // after clusterUser: it appends to a shared list
	b := retainBroker(t, t.TempDir(), "--retain-replay-rate=1MiB")
	frame := 4 + 1 + 1 + len("psensor") + 1 + len("events") + retainPad
	n := 3 << 20 / frame
	missWhileAway(t, b.addr, "plogger", "psensor", n)
	start := time.Now()
	r := &reader{t: t, c: resubscribe(t, b.addr, "plogger")}
	r.until(n - 1)
	took := time.Since(start)
	if took < 2500*time.Millisecond {
		t.Fatalf("%d messages (%d bytes) caught up in %v at --retain-replay-rate=1MiB", n, n*frame, took)
	}
	t.Logf("%d messages (%d bytes) caught up in %v at 1 MiB/s", n, n*frame, took)
}

// Two brokers on the test NATS (storetest.NATS): a subscriber that left one resumes
// on the other.
func TestRetainClusterResume(t *testing.T) {
	natsAddr := storetest.NATS(t)
	clusterUser("clogger")
	clusterUser("csensor")
	t.Parallel() // after clusterUser: it appends to a shared list
	prefix := fmt.Sprintf("rt%d", time.Now().UnixNano())
	defer deleteRetainStream(t, natsAddr, prefix)
	args := []string{"--cluster=nats://" + natsAddr, "--cluster-prefix=" + prefix}
	a := retainBroker(t, t.TempDir(), args...)
	b := retainBroker(t, t.TempDir(), args...)
	missWhileAway(t, a.addr, "clogger", "csensor", 500)
	time.Sleep(100 * time.Millisecond)
	sub2 := resubscribe(t, b.addr, "clogger")
	r := &reader{t: t, c: sub2}
	r.until(499)
}

// A store far smaller than the traffic drops its oldest messages; live
// delivery goes on untouched.
func TestRetainFullStoreKeepsLive(t *testing.T) {
	clusterUser("flogger")
	clusterUser("fsensor")
	t.Parallel() // after clusterUser: it appends to a shared list
	b := retainBroker(t, t.TempDir(), "--retain-max-bytes=1MiB")
	sub := dialAs(t, b.addr, "flogger", "events")
	pub := dialAs(t, b.addr, "fsensor")
	linked(t, pub, sub)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range 20000 { // 4 MB: four times the store
			if err := pub.publish(retainPayload(i)); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	r := &reader{t: t, c: sub}
	r.until(19999)
	wg.Wait()
}

// resubscribe logs in as ident and subscribes to events without waiting:
// what catch-up sends first must not be passed over.
func resubscribe(t *testing.T, addr, ident string) *wireClient {
	c := &wireClient{Client: brokertest.Login(t, addr, ident, "s"), ident: ident}
	c.Send(brokertest.Subscribe(t, ident, "events"))
	return c
}

// deleteRetainStream removes what a cluster test's brokers made on NATS.
func deleteRetainStream(t *testing.T, addr, prefix string) {
	nc, err := nats.Connect("nats://" + addr)
	if err != nil {
		t.Error(err)
		return
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stream := strings.ToUpper(prefix) + "_RETAIN"
	for _, s := range []string{stream, "KV_" + stream + "_POS"} {
		if err := js.DeleteStream(ctx, s); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			t.Errorf("deleting stream %s: %v", s, err)
		}
	}
}

// --check-config checks the retain flags and directory; a foreign
// directory stops the broker with one clear line.
func TestRetainCheckConfig(t *testing.T) {
	base := []string{"--auth=env", "-e", "tcp:interface=127.0.0.1:port=0"}
	dir := t.TempDir() + "/store"
	code, out := run(t, nil, append([]string{"--check-config", "--retain=events", "--retain-dir=" + dir}, base...)...)
	if code != 0 || !strings.Contains(out, "retained: events in "+dir) {
		t.Fatalf("exit %d: %s", code, out)
	}
	foreign := t.TempDir()
	if err := os.WriteFile(foreign+"/notes.txt", []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--check-config", "--retain=events", "--retain-dir=" + foreign}, "not a retained store"},
		{[]string{"--retain=events", "--retain-dir=" + foreign}, "not a retained store"},
		{[]string{"--check-config", "--retain=[", "--retain-dir=" + dir}, "retain pattern"},
		{[]string{"--check-config", "--retain=events", "--retain-max-bytes=1KiB"}, "--retain-max-bytes"},
		{[]string{"--check-config", "--retain=events", "--retain-replicas=0"}, "--retain-replicas"},
	} {
		code, out := run(t, nil, append(c.args, base...)...)
		if lines := strings.Split(strings.TrimSpace(out), "\n"); code == 0 || !strings.Contains(out, c.want) || len(lines) != 1 {
			t.Errorf("%v: exit %d, output:\n%s\nwant one line mentioning %q", c.args, code, out, c.want)
		}
	}
}

// While a logger is away, /chanz counts what the channel holds, /identz
// says how far behind the logger is, and `retained export` writes the
// history as JSON lines once the broker has stopped (not while it holds
// the store).
func TestRetainOperatorViews(t *testing.T) {
	clusterUser("ologger")
	clusterUser("osensor")
	t.Parallel() // after clusterUser: it appends to a shared list
	dir := t.TempDir()
	b := retainBroker(t, dir)
	sub := dialAs(t, b.addr, "ologger", "events")
	pub := dialAs(t, b.addr, "osensor")
	linked(t, pub, sub)
	sub.Conn.Close()
	time.Sleep(200 * time.Millisecond)
	for i := range 100 {
		if err := pub.publish(retainPayload(i)); err != nil {
			t.Fatal(err)
		}
	}
	pub.SubscribeOwn("osensor")
	time.Sleep(100 * time.Millisecond)
	var chanz struct {
		Channels []struct {
			Name     string
			Retained *struct{ Messages, Bytes uint64 }
		}
	}
	_, body := get(t, "http://"+b.exporter+"/chanz")
	if err := json.Unmarshal([]byte(body), &chanz); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, c := range chanz.Channels {
		if c.Name == "events" {
			found = true
			if c.Retained == nil || c.Retained.Messages < 100 {
				t.Errorf("/chanz events: %s", body)
			}
		}
	}
	if !found {
		t.Fatalf("no events in /chanz: %s", body)
	}
	if !strings.Contains(body, `"retain_store": {
    "failures": 0,
    "failing": false,
    "restarts": 0
  }`) {
		t.Errorf("/chanz does not say the store refused nothing: %s", body)
	}
	if _, page := get(t, "http://"+b.exporter+"/"); !strings.Contains(page, `<div class="card"><div class="n" id="n-retain-failures">0</div>`) {
		t.Errorf("the status page has no calm card for the retained store:\n%.3000s", page)
	}
	_, body = get(t, "http://"+b.exporter+"/identz")
	if !regexp.MustCompile(`"retained":\s*\[\s*\{\s*"channel":\s*"events",\s*"state":\s*"away",\s*"behind_messages":\s*100,`).MatchString(body) {
		t.Errorf("/identz does not say ologger is 100 behind: %s", body)
	}
	_, metrics := get(t, "http://"+b.exporter+"/metrics")
	for _, want := range []string{`hpfeeds_broker_retained_messages{channel="events"}`,
		`hpfeeds_broker_retain_behind_messages{channel="events",ident="ologger",state="away"} 100`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	// While the broker holds the store, neither an export nor a second
	// broker may open it: both would write its files.
	export := []string{"retained", "export", "--channel=events", "--since=1h", "--retain-dir=" + dir}
	for _, args := range [][]string{export, {"--auth=env", "-e", "tcp:interface=127.0.0.1:port=0", "--retain=events", "--retain-dir=" + dir}} {
		code, out := runIn(t, t.TempDir(), "", nil, args...)
		if lines := strings.Split(strings.TrimSpace(out), "\n"); code == 0 || len(lines) != 1 || !strings.Contains(out, "in use by another process") {
			t.Errorf("%v while the broker runs: exit %d, output:\n%s\nwant one line saying the store is in use", args, code, out)
		}
	}
	b.cmd.Process.Signal(syscall.SIGTERM)
	b.cmd.Wait()
	code, out := runIn(t, t.TempDir(), "", nil, export...)
	if code != 0 {
		t.Fatalf("export: exit %d: %s", code, out)
	}
	want := fmt.Sprintf(`"channel":"events","ident":"osensor","payload":%q,`, retainPayload(99))
	if !strings.Contains(out, want) || strings.Count(out, "\n") < 100 {
		t.Errorf("export wrote:\n%.2000s\nwant 100 lines and one with %s", out, want)
	}
}

// Catching up a backlog twice the --memory-limit keeps the broker's
// resident memory under the limit: catch-up reads the store only as the
// subscriber's queue drains: the 1 GiB under 256 MiB, in 16 KiB
// messages that do not compress (the store compresses what it keeps, and
// a GiB of one repeated byte would pass through it as a few MiB). It runs
// beside the other long tests (t.Parallel).
func TestRetainCatchUpUnderMemoryLimit(t *testing.T) {
	clusterUser("mlogger")
	clusterUser("msensor")
	t.Parallel()
	const limit, backlog, size = 256 << 20, 1 << 30, 16 << 10
	b := retainBroker(t, t.TempDir(), "--memory-limit=256MiB", "--retain-max-bytes=2GiB")
	sub := dialAs(t, b.addr, "mlogger", "events")
	pub := dialAs(t, b.addr, "msensor")
	linked(t, pub, sub)
	sub.Conn.Close()
	time.Sleep(200 * time.Millisecond)
	n := backlog / size
	// message i: its number and hex digits of a generator seeded with i.
	message := func(i int) string {
		seed := [32]byte{byte(i), byte(i >> 8), byte(i >> 16), byte(i >> 24)}
		pad := make([]byte, (size-10)/2)
		rand.NewChaCha8(seed).Read(pad)
		return fmt.Sprintf("%09d %x", i, pad)
	}
	pub.Conn.SetWriteDeadline(time.Now().Add(2 * time.Minute)) // a GiB at the store's pace
	for i := range n {
		if err := pub.publish(message(i)); err != nil {
			t.Fatal(err)
		}
	}
	pub.SubscribeOwn("msensor")
	time.Sleep(time.Second) // the last batches stored, the store's write cache idle
	pid := b.cmd.Process.Pid
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		t.Fatal(err)
	}
	before := vmKiB(t, pid, "VmRSS")
	start := time.Now()
	sub2 := resubscribe(t, b.addr, "mlogger")
	for i := range n {
		_, payload, ok := sub2.next(10 * time.Second)
		for ok && strings.HasPrefix(payload, "probe-") {
			_, payload, ok = sub2.next(10 * time.Second)
		}
		if !ok || payload != message(i) {
			t.Fatalf("message %d of %d missing or wrong: %.20q", i, n, payload)
		}
	}
	peak := vmKiB(t, pid, "VmHWM")
	t.Logf("caught up %d MiB (%d messages) in %v: broker RSS %d MiB before, peak %d MiB during (limit %d MiB)",
		backlog>>20, n, time.Since(start).Round(time.Millisecond), before>>10, peak>>10, limit>>20)
	if peak*1024 > limit {
		t.Errorf("peak RSS %d MiB over the %d MiB limit", peak>>10, limit>>20)
	}
}

func vmKiB(t *testing.T, pid int, field string) int {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^` + field + `:\s+(\d+) kB`).FindSubmatch(raw)
	if m == nil {
		t.Fatalf("no %s in /proc/%d/status", field, pid)
	}
	v, _ := strconv.Atoi(string(m[1]))
	return v
}

// A store whose disk fills (a 4 MiB tmpfs) while 167 MB of messages that
// do not compress flow: live delivery goes on, the refused batches are
// counted, and the broker's memory stays flat. JetStream stops answering
// for a stream after a write error, and batches retire in order, so before
// the store's acknowledgements had a timeout every later batch stayed in
// memory: 80 MB more for each 80 MB published.
func TestRetainDiskFull(t *testing.T) {
	_, b, sub, pub := onSmallDisk(t, "dflogger", "dfsensor")
	pub.Conn.SetWriteDeadline(time.Time{})
	const n, size = 10240, 16 << 10
	done := make(chan struct{})
	defer func() { pub.Conn.Close(); <-done }() // no t.Error after the test
	go func() {
		defer close(done)
		payload := make([]byte, size)
		for i := range n {
			crand.Read(payload)
			copy(payload, fmt.Sprintf("%d ", i))
			if err := pub.publish(string(payload)); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for i := range n {
		_, payload, ok := sub.next(10 * time.Second)
		for ok && strings.HasPrefix(payload, "probe-") {
			_, payload, ok = sub.next(10 * time.Second)
		}
		if num, _, _ := strings.Cut(payload, " "); !ok || num != strconv.Itoa(i) {
			t.Fatalf("message %d: got %.20q (%v)", i, payload, ok)
		}
	}
	peak := vmKiB(t, b.cmd.Process.Pid, "VmHWM")
	if peak > 130<<10 {
		t.Errorf("peak RSS %d MiB for %d MB through a full store", peak>>10, n*size/1000000)
	}
	t.Logf("peak RSS %d MiB", peak>>10)
	if f := b.metric(t, "hpfeeds_broker_retain_store_failures_total"); f == 0 {
		t.Error("no store failure counted")
	}
	// What /chanz says is retained leaves out the refused batches: about
	// what a 4 MiB disk holds, and the batches still awaiting an answer.
	_, metrics := get(t, "http://"+b.exporter+"/metrics")
	m := regexp.MustCompile(`(?m)^hpfeeds_broker_retained_bytes\{channel="events"\} (\S+)$`).FindStringSubmatch(metrics)
	if m == nil {
		t.Fatal("no hpfeeds_broker_retained_bytes for events")
	}
	if held, _ := strconv.ParseFloat(m[1], 64); held > 32<<20 {
		t.Errorf("%.0f bytes shown as retained by a 4 MiB store", held)
	}
}

// onSmallDisk runs a test beside the others (t.Parallel) with a retaining
// broker whose store is on a 4 MiB tmpfs (unmounted after the broker
// stops), logger subscribed to events and linked with sensor.
func onSmallDisk(t *testing.T, logger, sensor string) (dir string, b *clusterBroker, sub, pub *wireClient) {
	dir = t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", dir).CombinedOutput(); err != nil {
		storetest.Missing(t, fmt.Sprintf("mounting a 4 MiB tmpfs (needs root): %v: %s", err, out))
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	clusterUser(logger)
	clusterUser(sensor)
	t.Parallel() // after clusterUser: it appends to a shared list
	b = retainBroker(t, dir+"/store")
	sub = dialAs(t, b.addr, logger, "events")
	pub = dialAs(t, b.addr, sensor)
	linked(t, pub, sub)
	return dir, b, sub, pub
}

// Once a full disk has room again, the store takes batches again without
// a restart of the broker: the embedded JetStream, which keeps a write
// error and stores nothing more, is restarted in place, and what a
// subscriber missed after that is stored.
func TestRetainStoreRestarts(t *testing.T) {
	dir, b, sub, pub := onSmallDisk(t, "hlogger", "hsensor")
	// 8 MB that does not compress fills the 4 MiB disk.
	payload := make([]byte, 16<<10)
	for i := range 500 {
		crand.Read(payload)
		copy(payload, fmt.Sprintf("%d ", i))
		if err := pub.publish(string(payload)); err != nil {
			t.Fatal(err)
		}
		if _, _, ok := sub.next(10 * time.Second); !ok {
			t.Fatalf("message %d not delivered live", i)
		}
	}
	brokertest.Eventually(t, "the store refusing batches", func() bool {
		return b.metric(t, "hpfeeds_broker_retain_store_failures_total") > 0
	})
	sub.Conn.Close()
	if out, err := exec.Command("mount", "-o", "remount,size=64m", dir).CombinedOutput(); err != nil {
		t.Fatalf("growing the tmpfs: %v: %s", err, out)
	}
	// Due 10 to 15 s after the first check that saw the store failing and
	// none storing (checks every 5 s): Eventually's 30 s is too close.
	for deadline := time.Now().Add(time.Minute); b.metric(t, "hpfeeds_broker_retain_store_restarts_total") == 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the embedded JetStream not restarted a minute after the disk grew")
		}
	}
	brokertest.Eventually(t, "the status page showing the restart", func() bool { // it caches answers a moment
		_, page := get(t, "http://"+b.exporter+"/")
		return strings.Contains(page, "JetStream restarts after a write error: 1")
	})
	missWhileAway(t, b.addr, "hlogger", "hsensor", 100)
	// Sent from the store, not from the batches the broker still holds
	// until the store answers: a new broker on the same files.
	b.cmd.Process.Signal(syscall.SIGTERM)
	b.cmd.Wait()
	b2 := retainBroker(t, dir+"/store")
	r := &reader{t: t, c: resubscribe(t, b2.addr, "hlogger")}
	r.until(99)
}

// A store that fails (its stream deleted under the broker) never stops
// live delivery: the failures are counted.
func TestRetainFailingStoreKeepsLive(t *testing.T) {
	natsAddr := storetest.NATS(t)
	clusterUser("xlogger")
	clusterUser("xsensor")
	t.Parallel() // after clusterUser: it appends to a shared list
	prefix := fmt.Sprintf("rx%d", time.Now().UnixNano())
	defer deleteRetainStream(t, natsAddr, prefix)
	b := retainBroker(t, t.TempDir(), "--cluster=nats://"+natsAddr, "--cluster-prefix="+prefix)
	sub := dialAs(t, b.addr, "xlogger", "events")
	pub := dialAs(t, b.addr, "xsensor")
	linked(t, pub, sub)
	deleteRetainStream(t, natsAddr, prefix)
	r := &reader{t: t, c: sub}
	for i := range 2000 {
		if err := pub.publish(retainPayload(i)); err != nil {
			t.Fatal(err)
		}
		if i%100 == 99 {
			time.Sleep(10 * time.Millisecond) // several batches
		}
	}
	r.until(1999)
	brokertest.Eventually(t, "store failures counted", func() bool {
		return b.metric(t, "hpfeeds_broker_retain_store_failures_total") > 0
	})
	// /chanz and the status page say the store is failing, and why.
	var chanz struct {
		RetainStore struct {
			Failures  uint64 `json:"failures"`
			LastError string `json:"last_error"`
			Failing   bool   `json:"failing"`
		} `json:"retain_store"`
	}
	brokertest.Eventually(t, "/chanz showing the failures", func() bool { // it caches answers a moment
		_, body := get(t, "http://"+b.exporter+"/chanz")
		return json.Unmarshal([]byte(body), &chanz) == nil && chanz.RetainStore.Failures > 0
	})
	if !chanz.RetainStore.Failing || chanz.RetainStore.LastError == "" {
		t.Errorf("/chanz retain_store: %+v", chanz.RetainStore)
	}
	if _, page := get(t, "http://"+b.exporter+"/"); !regexp.MustCompile(`class="card bad"><div class="n" id="n-retain-failures">[1-9]`).MatchString(page) {
		t.Errorf("the status page does not flag the failing store:\n%.3000s", page)
	}
}

// A subscriber connected when the broker is killed with kill -9 resumes,
// after the restart, from the checkpoint of its position: it gets what was
// published after the restart and before it subscribed again.
func TestRetainKill9WhileSubscribed(t *testing.T) {
	clusterUser("qlogger")
	clusterUser("qsensor")
	t.Parallel() // after clusterUser: it appends to a shared list
	dir := t.TempDir()
	b := retainBroker(t, dir)
	sub := dialAs(t, b.addr, "qlogger", "events")
	pub := dialAs(t, b.addr, "qsensor")
	linked(t, pub, sub)
	for i := range 500 {
		if err := pub.publish(retainPayload(i)); err != nil {
			t.Fatal(err)
		}
	}
	r := &reader{t: t, c: sub}
	r.until(499)
	time.Sleep(1500 * time.Millisecond) // a checkpoint
	b.cmd.Process.Signal(syscall.SIGKILL)
	b.cmd.Wait()

	b2 := retainBroker(t, dir)
	pub2 := dialAs(t, b2.addr, "qsensor")
	for i := 500; i < 1000; i++ {
		if err := pub2.publish(retainPayload(i)); err != nil {
			t.Fatal(err)
		}
	}
	pub2.SubscribeOwn("qsensor")
	time.Sleep(100 * time.Millisecond)
	sub2 := resubscribe(t, b2.addr, "qlogger")
	r2 := &reader{t: t, c: sub2}
	first, ok := r2.read(10 * time.Second)
	if !ok || first > 500 {
		t.Fatalf("resumed at %d (ok %v), want 500 or before", first, ok)
	}
	r2.next = first + 1
	r2.until(999)
}

// A subscriber returning while the store does not answer (the cluster's
// NATS down) starts live; once NATS is back it is sent what it missed
// before it returned. Nothing stored is lost, though it comes after the
// live messages it got meanwhile.
func TestRetainResumeWhileStoreDown(t *testing.T) {
	clusterUser("wlogger")
	clusterUser("wsensor")
	t.Parallel() // after clusterUser: it appends to a shared list
	ns, b := natsGoesDown(t, 300, "wlogger", "wsensor")
	ns.stop()

	sub := resubscribe(t, b.addr, "wlogger") // its position cannot be read: live
	pub := dialAs(t, b.addr, "wsensor")
	linked(t, pub, sub)
	got := &tally{r: &reader{t: t, c: sub}, got: map[int]int{}}
	publishRange(t, pub, 300, 400)
	got.until("live while NATS is down", 300, 400)
	if n := len(got.got); n != 100 {
		t.Fatalf("while NATS was down it got %d distinct messages, want the 100 live ones", n)
	}
	waiting(t, b, "wlogger")
	if _, page := get(t, "http://"+b.exporter+"/"); !strings.Contains(page, `<span class="tag">events <span class="dim">waiting for the store</span></span>`) {
		t.Errorf("the status page does not say wlogger waits for the store:\n%.3000s", page)
	}
	ns.start()
	got.until("what it missed, once NATS is back", 0, 300)
	publishRange(t, pub, 400, 500)
	got.until("live again", 400, 500)
	t.Logf("500 messages, none lost, %d sent twice", got.dups())
}

// A subscriber catching up when the store stops answering (the cluster's
// NATS down) goes live, and once NATS is back is sent the rest of what it
// missed.
func TestRetainCatchUpWhileStoreDown(t *testing.T) {
	clusterUser("vlogger")
	clusterUser("vsensor")
	t.Parallel()        // after clusterUser: it appends to a shared list
	const missed = 3000 // 6 s at the rate below
	ns, b := natsGoesDown(t, missed, "vlogger", "vsensor", "--retain-replay-rate=100KiB")
	sub := resubscribe(t, b.addr, "vlogger")
	got := &tally{r: &reader{t: t, c: sub}, got: map[int]int{}}
	got.until("the start of the catch-up", 0, 200)
	ns.stop()
	waiting(t, b, "vlogger") // live, once a read of the store failed
	pub := dialAs(t, b.addr, "vsensor")
	publishRange(t, pub, missed, missed+100)
	got.until("live while NATS is down", missed, missed+100)
	ns.start()
	got.until("the rest of what it missed, once NATS is back", 0, missed)
	publishRange(t, pub, missed+100, missed+200)
	got.until("live again", missed+100, missed+200)
	t.Logf("%d messages, none lost, %d sent twice", missed+200, got.dups())
}

// privateNATS is a nats-server with JetStream of the test's own, to stop
// and start again on the same address and files.
type privateNATS struct {
	t        *testing.T
	addr, sd string
	cmd      *exec.Cmd
}

func (n *privateNATS) stop() { n.cmd.Process.Kill(); n.cmd.Wait() }

func (n *privateNATS) start() { n.cmd = startNATSOn(n.t, n.addr, "-js", "-sd", n.sd) }

// natsGoesDown starts a private NATS and a retaining broker clustered on
// it, where logger misses n messages of sensor's, stored.
func natsGoesDown(t *testing.T, n int, logger, sensor string, args ...string) (*privateNATS, *clusterBroker) {
	t.Helper()
	ns := &privateNATS{t: t, sd: t.TempDir()}
	ns.addr, ns.cmd = startNATS(t, "-js", "-sd", ns.sd)
	b := retainBroker(t, t.TempDir(), append(args, "--cluster=nats://"+ns.addr, "--lookup-timeout=1s")...)
	missWhileAway(t, b.addr, logger, sensor, n)
	want := strconv.Itoa(n + 1) // and the probe
	brokertest.Eventually(t, "the missed messages stored", func() bool {
		_, body := get(t, "http://"+b.exporter+"/metrics")
		m := regexp.MustCompile(`(?m)^hpfeeds_broker_retained_messages\{channel="events"\} (\d+)$`).FindStringSubmatch(body)
		return m != nil && m[1] == want
	})
	return ns, b
}

// waiting waits until /identz says ident is live and waits for the store.
func waiting(t *testing.T, b *clusterBroker, ident string) {
	t.Helper()
	re := regexp.MustCompile(`"ident":\s*"` + ident + `"[^\]]*"retained":\s*\[\s*\{\s*"channel":\s*"events",\s*"state":\s*"waiting"`)
	brokertest.Eventually(t, "/identz saying "+ident+" waits for the store", func() bool {
		_, body := get(t, "http://"+b.exporter+"/identz")
		return re.MatchString(body)
	})
}

func publishRange(t *testing.T, pub *wireClient, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		if err := pub.publish(retainPayload(i)); err != nil {
			t.Fatal(err)
		}
	}
}

// tally counts the numbered messages a reader gets, in any order.
type tally struct {
	r   *reader
	got map[int]int
}

// until reads until every message from from to to (excluded) has come.
func (y *tally) until(what string, from, to int) {
	y.r.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for i := from; i < to; {
		if y.got[i] > 0 {
			i++
			continue
		}
		n, ok := y.r.read(time.Until(deadline))
		if !ok {
			y.r.t.Fatalf("%s: got %d distinct messages, then nothing (message %d missing)", what, len(y.got), i)
		}
		y.got[n]++
	}
}

func (y *tally) dups() int {
	d := 0
	for _, c := range y.got {
		d += c - 1
	}
	return d
}

// A saved position that is not one (a damaged store, a hand edit) is not
// a store that does not answer: the subscriber starts live and its
// position is saved anew.
func TestRetainBadPosition(t *testing.T) {
	clusterUser("ulogger")
	clusterUser("usensor")
	t.Parallel() // after clusterUser: it appends to a shared list
	ns, b := natsGoesDown(t, 10, "ulogger", "usensor")
	nc, err := nats.Connect("nats://" + ns.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, "HPFEEDS_RETAIN_POS")
	if err != nil {
		t.Fatal(err)
	}
	enc := base64.RawURLEncoding
	key := "i" + enc.EncodeToString([]byte("ulogger")) + ".c" + enc.EncodeToString([]byte("events"))
	if _, err := kv.Get(ctx, key); err != nil {
		t.Fatalf("no saved position at %s: %v", key, err)
	}
	if _, err := kv.Put(ctx, key, []byte("not a position")); err != nil {
		t.Fatal(err)
	}
	sub := resubscribe(t, b.addr, "ulogger")
	pub := dialAs(t, b.addr, "usensor")
	linked(t, pub, sub)
	// At once: not waiting for a store that answered.
	if _, body := get(t, "http://"+b.exporter+"/identz"); !regexp.MustCompile(`"ident":\s*"ulogger"[^\]]*"retained":\s*\[\s*\{\s*"channel":\s*"events",\s*"state":\s*"live"`).MatchString(body) {
		t.Errorf("/identz does not say ulogger is live: %s", body)
	}
	publishRange(t, pub, 10, 20)
	got := &tally{r: &reader{t: t, c: sub}, got: map[int]int{}}
	got.until("live", 10, 20)
	brokertest.Eventually(t, "the position saved anew", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		e, err := kv.Get(ctx, key)
		return err == nil && regexp.MustCompile(`^\d+ \d+$`).Match(e.Value())
	})
}
