// Command soak runs a broker binary under minutes of mixed load and prints
// what was published, delivered and lost, and the broker's peak memory.
//
// Healthy subscribers stay connected from start to end and must get every
// message the publishers sent (lost must be 0). Meanwhile reconnect storms
// log in, subscribe and leave; garbage connections send random bytes; and
// the credential database (PostgreSQL, behind a proxy this program cuts or
// stalls in turn) is taken away and restored, so storm logins during an
// outage are refused and later ones succeed again. See docs/reliability.md.
package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"github.com/hpfeeds-go/hpfeeds/bench/internal/proc"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/hpfeeds-go/hpfeeds/client"
	"github.com/hpfeeds-go/hpfeeds/internal/tcpproxy"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

type options struct {
	broker                  string
	pg                      string
	duration                time.Duration
	publishers, subscribers int
	rate, size              int
	stormEvery              time.Duration
	stormSize, garbage      int
	outageEvery, outageFor  time.Duration
}

func main() {
	var o options
	flag.StringVar(&o.broker, "broker", "hpfeeds-broker", "broker binary to run")
	flag.StringVar(&o.pg, "pg", "postgres://postgres@127.0.0.1:5432/test", "PostgreSQL to create the soak's user database on")
	flag.DurationVar(&o.duration, "duration", 5*time.Minute, "how long to load the broker")
	flag.IntVar(&o.publishers, "publishers", 4, "publishing connections")
	flag.IntVar(&o.subscribers, "subscribers", 8, "healthy subscribers, connected throughout")
	flag.IntVar(&o.rate, "rate", 4000, "messages per second across publishers")
	flag.IntVar(&o.size, "size", 512, "payload bytes (at least 16)")
	flag.DurationVar(&o.stormEvery, "storm-every", 5*time.Second, "interval between reconnect storms")
	flag.IntVar(&o.stormSize, "storm-size", 500, "connections per storm")
	flag.IntVar(&o.garbage, "garbage", 50, "garbage connections per storm")
	flag.DurationVar(&o.outageEvery, "outage-every", 30*time.Second, "interval between database outages")
	flag.DurationVar(&o.outageFor, "outage-for", 5*time.Second, "length of each outage")
	flag.Parse()
	if o.size < 16 {
		o.size = 16
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
}

const channel = "soak"

func run(o options) (err error) {
	var rl syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	rl.Cur = rl.Max
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)

	db, cleanup, err := userDatabase(o.pg)
	if err != nil {
		return err
	}
	defer cleanup()
	pgHost := strings.SplitN(strings.SplitN(strings.TrimPrefix(o.pg, "postgres://"), "@", 2)[1], "/", 2)[0]
	proxy, err := tcpproxy.New(pgHost)
	if err != nil {
		return err
	}
	defer proxy.Close()
	b, err := startBroker(o.broker, proxy.Addr(), db)
	if err != nil {
		return err
	}
	defer func() { b.stop(err == nil) }()
	pid := b.cmd.Process.Pid
	mem := func() int64 { return proc.StatusKiB(pid, "VmHWM") }
	subs, err := connectSubscribers(b.addr, o)
	if err != nil {
		return err
	}
	fmt.Printf("soak: %v, %d publishers at %d msg/s of %d B, %d subscribers, storms of %d+%d every %v, database away %v every %v\n",
		o.duration, o.publishers, o.rate, o.size, o.subscribers, o.stormSize, o.garbage, o.stormEvery, o.outageFor, o.outageEvery)
	res, err := load(b.addr, proxy, o)
	if err != nil {
		return err
	}
	return res.report(subs, mem)
}

// broker is the broker process under soak.
type broker struct {
	addr string
	cmd  *exec.Cmd
	log  *os.File
}

// startBroker runs the broker binary on a free loopback port with the
// database+postgresql store of db, reached through proxyAddr. Its log (storm
// logins, outages) goes to a file, out of the report.
func startBroker(binary, proxyAddr, db string) (*broker, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	_, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command(binary, "-e", "tcp:interface=127.0.0.1:port="+port, "--lookup-timeout=2s",
		"--auth=database+postgresql://postgres@"+proxyAddr+"/"+db+"?sslmode=disable")
	logFile, err := os.CreateTemp("", "hpfeeds-soak-broker-*.log")
	if err != nil {
		return nil, err
	}
	cmd.Stderr = logFile
	b := &broker{addr: addr, cmd: cmd, log: logFile}
	if err := cmd.Start(); err != nil {
		b.stop(true)
		return nil, err
	}
	fmt.Printf("broker log: %s\n", logFile.Name())
	if err := waitListening(addr); err != nil {
		b.stop(false)
		return nil, err
	}
	return b, nil
}

// stop ends the broker; its log is kept only when something went wrong.
func (b *broker) stop(ok bool) {
	if b.cmd.Process != nil {
		b.cmd.Process.Signal(syscall.SIGTERM)
		b.cmd.Wait()
	}
	b.log.Close()
	if ok {
		os.Remove(b.log.Name())
	}
}

func dial(addr, ident string) (*client.Client, error) {
	return client.Dial(context.Background(), client.Config{Addr: addr, Ident: ident, Secret: "soak", MessageBuffer: 65536})
}

// connectSubscribers connects the healthy subscribers and returns once a
// probe proves every subscription is in place.
func connectSubscribers(addr string, o options) ([]*subscriber, error) {
	subs := make([]*subscriber, o.subscribers)
	for i := range subs {
		c, err := dial(addr, "sub")
		if err != nil {
			return nil, fmt.Errorf("subscriber %d: %w", i, err)
		}
		subs[i] = newSubscriber(c, o.publishers)
		if err := c.Subscribe(channel); err != nil {
			return nil, err
		}
	}
	probe, err := dial(addr, "pub")
	if err != nil {
		return nil, err
	}
	defer probe.Close()
	for _, s := range subs {
		for !s.ready.Load() {
			probe.Publish(channel, []byte("probe"))
			time.Sleep(20 * time.Millisecond)
		}
	}
	return subs, nil
}

// result is what a soak counted.
type result struct {
	published, pubErrs, outages atomic.Int64
	storms                      stormStats
}

// load publishes for o.duration while storms and database outages run.
func load(addr string, proxy *tcpproxy.Proxy, o options) (*result, error) {
	r := &result{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for p := 0; p < o.publishers; p++ {
		c, err := dial(addr, "pub")
		if err != nil {
			close(stop)
			wg.Wait()
			return nil, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			publish(c, p, o, stop, &r.published, &r.pubErrs)
		}()
	}
	wg.Add(2)
	go func() { defer wg.Done(); storms(addr, o, stop, &r.storms) }()
	go func() { defer wg.Done(); cutDatabase(proxy, o, stop, &r.outages) }()
	time.Sleep(o.duration)
	close(stop)
	wg.Wait()
	return r, nil
}

// report waits for the deliveries to stop changing, prints the counts and
// says whether the healthy clients were served in full. peakKiB reads the
// broker's peak RSS.
func (r *result) report(subs []*subscriber, peakKiB func() int64) error {
	total := func() (n int64) {
		for _, s := range subs {
			n += s.received.Load()
		}
		return n
	}
	published := r.published.Load()
	want := published * int64(len(subs))
	for last, still := int64(-1), 0; still < 20 && total() < want; {
		if n := total(); n == last {
			still++
		} else {
			last, still = n, 0
		}
		time.Sleep(100 * time.Millisecond)
	}
	var lost, disconnects, outOfOrder int64
	for _, s := range subs {
		s.c.Close()
		lost += published - s.received.Load()
		disconnects += s.errors.Load()
		outOfOrder += s.outOfOrder.Load()
	}
	st := &r.storms
	fmt.Printf("published            %d (%d publish errors)\n", published, r.pubErrs.Load())
	fmt.Printf("delivered            %d of %d expected\n", total(), want)
	fmt.Printf("lost                 %d\n", lost)
	fmt.Printf("out of order         %d\n", outOfOrder)
	fmt.Printf("healthy client errors %d\n", disconnects)
	fmt.Printf("storm logins         %d ok, %d refused (database away), %d other failures\n", st.ok.Load(), st.refused.Load(), st.failed.Load())
	fmt.Printf("garbage connections  %d\n", st.garbage.Load())
	fmt.Printf("database outages     %d (cut and stalled in turn)\n", r.outages.Load())
	fmt.Printf("broker peak RSS      %.1f MiB (VmHWM)\n", float64(peakKiB())/1024)
	if lost != 0 || outOfOrder != 0 || disconnects != 0 || r.pubErrs.Load() != 0 {
		return errors.New("healthy clients lost messages or connections")
	}
	if st.ok.Load() == 0 {
		return errors.New("no storm login succeeded")
	}
	return nil
}

// userDatabase creates a database holding the soak's users in the
// documented auth_keys table, and a function that drops it.
func userDatabase(dsn string) (string, func(), error) {
	admin, err := sql.Open("pgx", dsn)
	if err != nil {
		return "", nil, err
	}
	name := fmt.Sprintf("hpfeeds_soak_%d", time.Now().UnixNano())
	if _, err := admin.Exec("CREATE DATABASE " + name); err != nil {
		return "", nil, fmt.Errorf("creating the soak database on %s: %w", dsn, err)
	}
	drop := func() {
		admin.Exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '" + name + "'")
		admin.Exec("DROP DATABASE " + name)
		admin.Close()
	}
	db, err := sql.Open("pgx", dsn[:strings.LastIndex(dsn, "/")+1]+name)
	if err != nil {
		drop()
		return "", nil, err
	}
	defer db.Close()
	_, err = db.Exec(`CREATE TABLE auth_keys (id serial PRIMARY KEY, identifier varchar(36),
		secret varchar(36), publish json, subscribe json);
		INSERT INTO auth_keys (identifier, secret, publish, subscribe) VALUES
		('pub', 'soak', '["soak"]', '[]'), ('sub', 'soak', '[]', '["soak"]'), ('storm', 'soak', '[]', '["soak"]')`)
	if err != nil {
		drop()
		return "", nil, err
	}
	return name, drop, nil
}

func waitListening(addr string) error {
	for i := 0; i < 100; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("broker did not listen on %s", addr)
}

type subscriber struct {
	c                            *client.Client
	ready                        atomic.Bool
	received, outOfOrder, errors atomic.Int64
	next                         []uint64
}

func newSubscriber(c *client.Client, publishers int) *subscriber {
	s := &subscriber{c: c, next: make([]uint64, publishers)}
	go func() {
		for m := range c.Messages() {
			if string(m.Payload) == "probe" {
				s.ready.Store(true)
				continue
			}
			p, seq := binary.BigEndian.Uint64(m.Payload), binary.BigEndian.Uint64(m.Payload[8:])
			if seq != s.next[p] {
				s.outOfOrder.Add(1)
			}
			s.next[p] = seq + 1
			s.received.Add(1)
		}
	}()
	go func() {
		for err := range c.Errors() {
			fmt.Fprintln(os.Stderr, "healthy subscriber:", err)
			s.errors.Add(1)
		}
	}()
	return s
}

func publish(c *client.Client, p int, o options, stop <-chan struct{}, published, errs *atomic.Int64) {
	payload := make([]byte, o.size)
	binary.BigEndian.PutUint64(payload, uint64(p))
	interval := time.Second * time.Duration(o.publishers) / time.Duration(o.rate)
	t := time.NewTicker(max(interval, time.Millisecond))
	defer t.Stop()
	perTick := max(1, int(time.Millisecond/max(interval, 1)))
	var seq uint64
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		for range perTick {
			binary.BigEndian.PutUint64(payload[8:], seq)
			if err := c.Publish(channel, payload); err != nil {
				errs.Add(1)
				continue
			}
			seq++
			published.Add(1)
		}
	}
}

type stormStats struct{ ok, refused, failed, garbage atomic.Int64 }

// storms opens stormSize connections that log in, subscribe and leave, and
// garbage connections that send random bytes, every stormEvery.
func storms(addr string, o options, stop <-chan struct{}, st *stormStats) {
	every(o.stormEvery, stop, func() {
		var wg sync.WaitGroup
		for i := 0; i < o.stormSize; i++ {
			wg.Add(1)
			go func() { defer wg.Done(); stormLogin(addr, st) }()
		}
		for i := 0; i < o.garbage; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if c, err := net.Dial("tcp", addr); err == nil {
					junk := make([]byte, 512)
					rand.Read(junk)
					c.Write(junk)
					c.Close()
					st.garbage.Add(1)
				}
			}()
		}
		wg.Wait()
	})
}

// every calls f every d until stop is closed.
func every(d time.Duration, stop <-chan struct{}, f func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			f()
		}
	}
}

func stormLogin(addr string, st *stormStats) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		st.failed.Add(1)
		return
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	rd := wire.NewReader(c, wire.UniformLimits(1<<16))
	info, err := rd.Next()
	if err != nil || info.Op != wire.OpInfo {
		st.failed.Add(1)
		return
	}
	// A refused login gets an ERROR within the lookup timeout; an accepted
	// one starts receiving the publishers' messages.
	f, _ := wire.AppendAuth(nil, info.Payload, "storm", "soak")
	f, _ = wire.AppendSubscribe(f, []byte("storm"), []byte(channel))
	if _, err := c.Write(f); err != nil {
		st.failed.Add(1)
		return
	}
	// Past the broker's 2 s lookup timeout, so that a login stuck on a
	// silent database is seen refused, not taken for a quiet subscription.
	c.SetReadDeadline(time.Now().Add(3500 * time.Millisecond))
	fr, err := rd.Next()
	switch {
	case err == nil && fr.Op == wire.OpError && strings.HasPrefix(string(fr.Payload), "Authentication failed"):
		st.refused.Add(1)
	case err == nil && fr.Op == wire.OpPublish, isTimeout(err):
		// Subscribed: either a message arrived or nothing went wrong.
		st.ok.Add(1)
	default:
		st.failed.Add(1)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// cutDatabase takes the database away every outageEvery, alternately
// loudly (connections dropped, new ones refused) and silently (nothing
// answers, as behind a firewall that drops packets).
func cutDatabase(p *tcpproxy.Proxy, o options, stop <-chan struct{}, n *atomic.Int64) {
	every(o.outageEvery, stop, func() {
		if n.Add(1)%2 == 1 {
			p.Cut()
		} else {
			p.Stall()
		}
		select {
		case <-stop:
		case <-time.After(o.outageFor):
		}
		p.Restore()
	})
}
