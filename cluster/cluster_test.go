package cluster_test

import (
	"fmt"
	"github.com/hpfeeds-go/hpfeeds/internal/testcert"
	"log/slog"
	"math/rand/v2"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
	"github.com/hpfeeds-go/hpfeeds/cluster"
	"github.com/hpfeeds-go/hpfeeds/internal/tcpproxy"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

const prefix = "test"

func TestSubject(t *testing.T) {
	channels := []string{"", "a", "a.b", "a*", ">", "a b", "\x00\xff", "dionaea.capture", "c", "cc", "\t\r\n"}
	rnd := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		b := make([]byte, rnd.IntN(256))
		for i := range b {
			b[i] = byte(rnd.UintN(256))
		}
		channels = append(channels, string(b))
	}
	seen := map[string]string{}
	for _, ch := range channels {
		s := cluster.Subject("hpfeeds.net1", ch)
		if prev, dup := seen[s]; dup && prev != ch {
			t.Fatalf("%q and %q both map to %s", prev, ch, s)
		}
		seen[s] = ch
		// Exactly one token after the prefix, and a subject nats-server
		// takes literally (no wildcard).
		if !strings.HasPrefix(s, "hpfeeds.net1.") || strings.Count(s, ".") != 2 || !server.IsValidLiteralSubject(s) {
			t.Fatalf("%q maps to %q", ch, s)
		}
	}
}

func TestPrefixMustBeLiteralTokens(t *testing.T) {
	for _, p := range []string{"a b", "a.*", ">", "a..b", ".a", "a.", "a\tb"} {
		if _, err := cluster.New(cluster.Options{URLs: "nats://127.0.0.1:1", Prefix: p}); err == nil {
			t.Errorf("prefix %q accepted", p)
		}
	}
}

// startNATS runs an embedded nats-server on port (0: a free one).
func startNATS(t testing.TB, port int) *server.Server {
	t.Helper()
	return startNATSOpts(t, &server.Options{Port: port})
}

func startNATSOpts(t testing.TB, o *server.Options) *server.Server {
	t.Helper()
	o.Host = "127.0.0.1"
	if o.Port == 0 {
		o.Port = server.RANDOM_PORT
	}
	o.NoLog, o.NoSigs = true, true
	ns, err := server.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(ns.Shutdown)
	return ns
}

func natsURL(ns *server.Server) string { return "nats://" + ns.Addr().String() }

func natsPort(ns *server.Server) int { return ns.Addr().(*net.TCPAddr).Port }

// The credential store every broker shares. Each client has its own ident
// and a channel named after it, which it uses to learn that the broker has
// read its SUBSCRIBE (see connect). Nobody else subscribes to that channel,
// so those messages never cross the cluster.
var users = brokertest.NewUsers()

func ident(name string) string {
	users.Put(auth.User{Ident: name, Secret: "s", PubChans: []string{"events", name}, SubChans: []string{"events", name}})
	return name
}

type node struct {
	name   string
	srv    *brokertest.Server
	bridge *cluster.Bridge
	syncs  atomic.Uint64 // messages this node's clients published to sync
}

var nodeSeq atomic.Uint64

func startBroker(t testing.TB, url string) *node {
	t.Helper()
	name := fmt.Sprintf("broker%d", nodeSeq.Add(1))
	opts := cluster.Options{URLs: url, Prefix: prefix, Name: name}
	if _, bench := t.(*testing.B); bench {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	br, err := cluster.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(br.Close)
	srv := brokertest.Start(t, users, func(c *broker.Config) { c.Bridge = br })
	br.Attach(srv.Broker)
	return &node{name: name, srv: srv, bridge: br}
}

// natsSubs returns the subjects each broker's NATS connection subscribes to.
func natsSubs(t testing.TB, ns *server.Server) map[string][]string {
	t.Helper()
	cz, err := ns.Connz(&server.ConnzOptions{Subscriptions: true})
	if err != nil {
		t.Fatal(err)
	}
	subs := map[string][]string{}
	for _, c := range cz.Conns {
		// Each bridge's inbox (for no-responders answers) is not interest.
		c.Subs = slices.DeleteFunc(c.Subs, func(s string) bool { return strings.HasPrefix(s, prefix+".r") })
		slices.Sort(c.Subs)
		subs[c.Name] = c.Subs
	}
	return subs
}

// waitInterest waits until nats-server holds exactly these subjects for
// each node: from then on, a message published anywhere reaches them.
func waitInterest(t testing.TB, ns *server.Server, want map[*node][]string) {
	t.Helper()
	subjects := map[string][]string{}
	for n, channels := range want {
		subjects[n.name] = []string{}
		for _, ch := range channels {
			subjects[n.name] = append(subjects[n.name], cluster.Subject(prefix, ch))
		}
		slices.Sort(subjects[n.name])
	}
	var got map[string][]string
	for range 1000 {
		got = natsSubs(t, ns)
		ok := true
		for name, s := range subjects {
			ok = ok && slices.Equal(got[name], s)
		}
		if ok {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("NATS subscriptions %v, want %v", got, subjects)
}

type client struct {
	*brokertest.Client
	ident string
}

// connect logs in as ident on n and subscribes to channels, returning once
// the broker has read the SUBSCRIBE frames (see SubscribeOwn).
func connect(t testing.TB, n *node, ident string, channels ...string) *client {
	t.Helper()
	c := &client{Client: brokertest.Login(t, n.srv.Addr, ident, "s"), ident: ident}
	n.syncs.Add(1)
	c.SubscribeOwn(ident, channels...)
	return c
}

func (c *client) write(b []byte) error {
	_, err := c.Conn.Write(b)
	return err
}

func (c *client) publish(channel, payload string) {
	c.T.Helper()
	c.Send(brokertest.Publish(c.T, c.ident, channel, payload))
}

// next returns the next message on events as ident and payload.
func (c *client) next() (string, string) {
	c.T.Helper()
	for {
		c.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		f, err := c.R.Next()
		if err != nil {
			c.T.Fatalf("%s reading: %v", c.ident, err)
		}
		if f.Op != wire.OpPublish {
			c.T.Fatalf("%s got %v %q", c.ident, f.Op, f.Payload)
		}
		if string(f.Channel) == "events" {
			return string(f.Ident), string(f.Payload)
		}
	}
}

// silent checks that nothing more arrives on events for a while.
func silent(t testing.TB, clients ...*client) {
	t.Helper()
	deadline := time.Now().Add(300 * time.Millisecond)
	for _, c := range clients {
		c.Conn.SetReadDeadline(deadline)
		for {
			f, err := c.R.Next()
			if err != nil {
				break
			}
			if string(f.Channel) == "events" {
				t.Fatalf("%s: unexpected %q from %s", c.ident, f.Payload, f.Ident)
			}
		}
	}
}

// waitStats waits until every node's counters are what want says.
func waitStats(t *testing.T, nodes []*node, want func(*node) cluster.Stats) {
	t.Helper()
	for i := 0; ; i++ {
		done := true
		for _, n := range nodes {
			got, w := n.bridge.Stats(), want(n)
			if got != w {
				if i == 500 {
					t.Fatalf("%s: stats %+v, want %+v", n.name, got, w)
				}
				done = false
			}
		}
		if done {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// One publisher and two subscribers on every broker: every subscriber
// gets every message exactly once, with its publisher's ident, in each
// publisher's order; and only subscribed channels cross NATS.
func TestExactlyOnce(t *testing.T) {
	for _, brokers := range []int{2, 3} {
		t.Run(fmt.Sprintf("%d brokers", brokers), func(t *testing.T) {
			ns := startNATS(t, 0)
			var nodes []*node
			interest := map[*node][]string{}
			var subs, pubs []*client
			for i := range brokers {
				n := startBroker(t, natsURL(ns))
				nodes = append(nodes, n)
				interest[n] = []string{"events"}
				for j := range 2 {
					subs = append(subs, connect(t, n, ident(fmt.Sprintf("sub%d.%d", i, j)), "events"))
					interest[n] = append(interest[n], subs[len(subs)-1].ident)
				}
				pubs = append(pubs, connect(t, n, ident(fmt.Sprintf("pub%d", i))))
				interest[n] = append(interest[n], pubs[len(pubs)-1].ident)
			}
			waitInterest(t, ns, interest)

			const msgs = 300
			for i := range msgs {
				for _, p := range pubs {
					p.publish("events", strconv.Itoa(i))
				}
			}
			for _, s := range subs {
				next := map[string]int{}
				for range msgs * len(pubs) {
					from, payload := s.next()
					if payload != strconv.Itoa(next[from]) {
						t.Fatalf("%s: %q from %s, want %d", s.ident, payload, from, next[from])
					}
					next[from]++
				}
				for _, p := range pubs {
					if next[p.ident] != msgs {
						t.Fatalf("%s: %d messages from %s, want %d", s.ident, next[p.ident], p.ident, msgs)
					}
				}
			}
			silent(t, subs...)
			waitStats(t, nodes, func(n *node) cluster.Stats {
				return cluster.Stats{Forwarded: n.syncs.Load() + msgs, Received: msgs * uint64(brokers-1), Connected: true}
			})
		})
	}
}

// A publisher subscribed to its own channel gets its message once, and so
// does the same ident logged in on another broker.
func TestSelfDeliveryAcrossBrokers(t *testing.T) {
	ns := startNATS(t, 0)
	a, b := startBroker(t, natsURL(ns)), startBroker(t, natsURL(ns))
	id := ident("self")
	onA := connect(t, a, id, "events")
	onB := connect(t, b, id, "events")
	waitInterest(t, ns, map[*node][]string{a: {"events", id}, b: {"events", id}})
	onA.publish("events", "mine")
	for _, c := range []*client{onA, onB} {
		if from, got := c.next(); from != id || got != "mine" {
			t.Fatalf("got %q from %s", got, from)
		}
	}
	silent(t, onA, onB)
}

// A broker holds a NATS subscription for a channel exactly while it has
// local subscribers to it.
func TestInterestFollowsLocalSubscribers(t *testing.T) {
	ns := startNATS(t, 0)
	a, b := startBroker(t, natsURL(ns)), startBroker(t, natsURL(ns))
	p := connect(t, b, ident("interest-pub"))
	waitInterest(t, ns, map[*node][]string{a: nil, b: {p.ident}})

	first := connect(t, a, ident("interest1"), "events")
	second := connect(t, a, ident("interest2"), "events")
	waitInterest(t, ns, map[*node][]string{a: {"events", first.ident, second.ident}, b: {p.ident}})

	b1, _ := wire.AppendUnsubscribe(nil, []byte(first.ident), []byte("events"))
	if err := first.write(b1); err != nil {
		t.Fatal(err)
	}
	// Once its own token is back, broker a has handled the UNSUBSCRIBE
	// sent before it: the message below cannot overtake it.
	a.syncs.Add(1)
	first.SubscribeOwn(first.ident)
	// second still listens, so the channel stays subscribed.
	p.publish("events", "still there")
	if _, got := second.next(); got != "still there" {
		t.Fatalf("got %q", got)
	}
	silent(t, first)
	waitInterest(t, ns, map[*node][]string{a: {"events", first.ident, second.ident}, b: {p.ident}})

	second.Conn.Close()
	waitInterest(t, ns, map[*node][]string{a: {first.ident}, b: {p.ident}})
}

// NATS going away stops only forwarding, which fails fast and is counted;
// when NATS returns on the same address, the brokers reconnect and their
// subscriptions are back without any client subscribing again.
func TestNATSRestart(t *testing.T) {
	ns := startNATS(t, 0)
	port := natsPort(ns)
	a, b := startBroker(t, natsURL(ns)), startBroker(t, natsURL(ns))
	pub := connect(t, a, ident("restart-pub"))
	local := connect(t, a, ident("restart-local"), "events")
	remote := connect(t, b, ident("restart-remote"), "events")
	interest := map[*node][]string{a: {"events", pub.ident, local.ident}, b: {"events", remote.ident}}
	waitInterest(t, ns, interest)
	pub.publish("events", "before")
	for _, c := range []*client{local, remote} {
		if _, got := c.next(); got != "before" {
			t.Fatalf("%s got %q", c.ident, got)
		}
	}

	ns.Shutdown()
	for _, n := range []*node{a, b} {
		brokertest.Eventually(t, n.name+" disconnected", func() bool { return !n.bridge.Stats().Connected })
	}
	failedBefore := a.bridge.Stats().ForwardFailed
	const outage = 50
	for i := range outage {
		pub.publish("events", "outage "+strconv.Itoa(i))
	}
	for i := range outage {
		if _, got := local.next(); got != "outage "+strconv.Itoa(i) {
			t.Fatalf("local subscriber got %q during the outage", got)
		}
	}
	// A subscriber arriving during the outage is served locally, and its
	// channel is subscribed on NATS once it returns.
	late := connect(t, b, ident("restart-late"), "events")
	interest[b] = append(interest[b], late.ident)

	ns = startNATS(t, port)
	for _, n := range []*node{a, b} {
		brokertest.Eventually(t, n.name+" reconnected", func() bool { return n.bridge.Stats().Connected })
	}
	waitInterest(t, ns, interest)
	if got := a.bridge.Stats().ForwardFailed - failedBefore; got != outage {
		t.Fatalf("%d messages counted as not forwarded, want %d", got, outage)
	}
	pub.publish("events", "after")
	// At most once across brokers during the outage: nothing from it
	// arrives late.
	for _, c := range []*client{local, remote, late} {
		if _, got := c.next(); got != "after" {
			t.Fatalf("%s got %q", c.ident, got)
		}
	}
	silent(t, local, remote, late)
}

// A broker dying mid-run leaves the others exchanging: subscribers on the
// survivors get every message published on them exactly once, and of the
// dead broker's publisher a gapless prefix.
func TestBrokerLoss(t *testing.T) {
	ns := startNATS(t, 0)
	a, b, c := startBroker(t, natsURL(ns)), startBroker(t, natsURL(ns)), startBroker(t, natsURL(ns))
	pubA, pubB, pubC := connect(t, a, ident("loss-pubA")), connect(t, b, ident("loss-pubB")), connect(t, c, ident("loss-pubC"))
	subA, subC := connect(t, a, ident("loss-subA"), "events"), connect(t, c, ident("loss-subC"), "events")
	subB := connect(t, b, ident("loss-subB"), "events")
	waitInterest(t, ns, map[*node][]string{
		a: {"events", pubA.ident, subA.ident},
		b: {"events", pubB.ident, subB.ident},
		c: {"events", pubC.ident, subC.ident},
	})

	// Publishers pace themselves so that the subscribers keep up; b's
	// publishes until its broker is gone.
	const msgs = 2000
	var stop atomic.Bool
	var wg sync.WaitGroup
	sent := map[*client]*atomic.Int64{pubA: {}, pubB: {}, pubC: {}}
	for p, n := range sent {
		wg.Go(func() {
			for i := 0; p == pubB || i < msgs; i++ {
				if p == pubB && stop.Load() {
					return
				}
				b, _ := wire.AppendPublish(nil, []byte(p.ident), []byte("events"), []byte(strconv.Itoa(i)))
				if p.write(b) != nil {
					return
				}
				n.Add(1)
				if i%10 == 9 {
					time.Sleep(time.Millisecond)
				}
			}
		})
	}
	defer wg.Wait()
	defer stop.Store(true)

	// Kill b once its publisher's messages are crossing.
	next := map[*client]map[string]int{subA: {}, subC: {}}
	read := func(s *client) {
		from, payload := s.next()
		if payload != strconv.Itoa(next[s][from]) {
			t.Fatalf("%s: %q from %s, want %d", s.ident, payload, from, next[s][from])
		}
		next[s][from]++
	}
	for next[subA][pubB.ident] < 100 {
		read(subA)
	}
	b.bridge.Close()
	if err := b.srv.Broker.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	stop.Store(true)
	wg.Wait()
	// Messages after the loss cross too.
	pubA.publish("events", strconv.Itoa(msgs))
	pubC.publish("events", strconv.Itoa(msgs))
	for _, s := range []*client{subA, subC} {
		for next[s][pubA.ident] <= msgs || next[s][pubC.ident] <= msgs {
			read(s)
		}
		// b's last messages may still be on their way through NATS.
		for {
			s.Conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			f, err := s.R.Next()
			if err != nil {
				break
			}
			if string(f.Channel) != "events" {
				continue
			}
			if string(f.Ident) != pubB.ident || string(f.Payload) != strconv.Itoa(next[s][pubB.ident]) {
				t.Fatalf("%s: %q from %s after the last messages", s.ident, f.Payload, f.Ident)
			}
			next[s][pubB.ident]++
		}
	}
	// Whatever b forwarded before it died reached both survivors.
	fromB := next[subA][pubB.ident]
	if fromB != next[subC][pubB.ident] || int64(fromB) > sent[pubB].Load() {
		t.Fatalf("from the lost broker's publisher, which sent %d: %d to %s, %d to %s",
			sent[pubB].Load(), fromB, subA.ident, next[subC][pubB.ident], subC.ident)
	}
}

// The credential and TLS options reach NATS.
func TestNATSCredentials(t *testing.T) {
	t.Run("user and password", func(t *testing.T) {
		ns := startNATSOpts(t, &server.Options{Username: "hp", Password: "secret"})
		br, err := cluster.New(cluster.Options{URLs: "nats://127.0.0.1:1," + natsURL(ns), User: "hp", Password: "secret"})
		if err != nil {
			t.Fatal(err)
		}
		defer br.Close()
		if !br.Stats().Connected {
			t.Fatal("not connected")
		}
		if s := br.String(); strings.Contains(s, "secret") {
			t.Fatalf("password shown in %q", s)
		}
		_, err = cluster.New(cluster.Options{URLs: "nats://hp:wrong@" + ns.Addr().String()})
		if err == nil || !strings.Contains(err.Error(), "uthorization") || strings.Contains(err.Error(), "wrong") {
			t.Fatalf("wrong password: %v", err)
		}
	})
	t.Run("token", func(t *testing.T) {
		ns := startNATSOpts(t, &server.Options{Authorization: "tok"})
		br, err := cluster.New(cluster.Options{URLs: natsURL(ns), Token: "tok"})
		if err != nil {
			t.Fatal(err)
		}
		defer br.Close()
		if !br.Stats().Connected {
			t.Fatal("not connected")
		}
	})
	t.Run("mutual TLS", func(t *testing.T) {
		dir := t.TempDir()
		ca, cert, key := testcert.NewCA(t).WriteFiles(t, dir, "nats", "127.0.0.1")
		tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: cert, KeyFile: key, CaFile: ca, Verify: true})
		if err != nil {
			t.Fatal(err)
		}
		ns := startNATSOpts(t, &server.Options{TLSConfig: tc, TLSVerify: true, TLS: true})
		br, err := cluster.New(cluster.Options{URLs: "tls://" + ns.Addr().String(), CAFile: ca, CertFile: cert, KeyFile: key})
		if err != nil {
			t.Fatal(err)
		}
		defer br.Close()
		if !br.Stats().Connected {
			t.Fatal("not connected")
		}
		if _, err := cluster.New(cluster.Options{URLs: natsURL(ns), CAFile: filepath.Join(dir, "missing.pem")}); err == nil {
			t.Fatal("a missing CA file was accepted")
		}
	})
}

// Throughput across two brokers: publisher on one, subscriber on the
// other, 256-byte payloads, through an embedded nats-server.
func BenchmarkAcrossTwoBrokers(bm *testing.B) {
	ns := startNATS(bm, 0)
	a, b := startBroker(bm, natsURL(ns)), startBroker(bm, natsURL(ns))
	pub := connect(bm, a, ident("bench-pub"))
	sub := connect(bm, b, ident("bench-sub"), "events")
	waitInterest(bm, ns, map[*node][]string{a: {pub.ident}, b: {"events", sub.ident}})
	payload := make([]byte, 256)
	frame, _ := wire.AppendPublish(nil, []byte(pub.ident), []byte("events"), payload)
	var batch []byte
	for range 64 {
		batch = append(batch, frame...)
	}
	var received atomic.Int64
	done := make(chan error, 1)
	bm.ResetTimer()
	go func() {
		for received.Load() < int64(bm.N) {
			sub.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			f, err := sub.R.Next()
			if err != nil {
				done <- err
				return
			}
			if string(f.Channel) == "events" {
				received.Add(1)
			}
		}
		done <- nil
	}()
	// A bounded window keeps NATS from dropping a slow consumer.
	for sent := 0; sent < bm.N; {
		for int64(sent)-received.Load() > 50_000 {
			time.Sleep(50 * time.Microsecond)
		}
		n := min(64, bm.N-sent)
		if err := pub.write(batch[:n*len(frame)]); err != nil {
			bm.Fatal(err)
		}
		sent += n
	}
	if err := <-done; err != nil {
		bm.Fatal(err)
	}
	bm.ReportMetric(float64(bm.N)/bm.Elapsed().Seconds(), "msgs/s")
}

// A NATS not yet up when the broker starts is not fatal: local delivery
// works, and the channels subscribed meanwhile are on NATS once it is up.
func TestNATSLateAtStartUp(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	url := "nats://127.0.0.1:" + strconv.Itoa(port)
	br, err := cluster.New(cluster.Options{URLs: url, Prefix: prefix, Name: "late"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(br.Close)
	srv := brokertest.Start(t, users, func(c *broker.Config) { c.Bridge = br })
	br.Attach(srv.Broker)
	a := &node{name: "late", srv: srv, bridge: br}
	sub := connect(t, a, ident("late-sub"), "events")
	pub := connect(t, a, ident("late-pub"))
	pub.publish("events", "local")
	if _, got := sub.next(); got != "local" {
		t.Fatalf("got %q", got)
	}
	// Forwarding is asynchronous: the count follows the local delivery.
	brokertest.Eventually(t, "3 messages not forwarded", func() bool { return br.Stats().ForwardFailed == 3 })
	if st := br.Stats(); st.Connected || st.ForwardFailed != 3 {
		t.Fatalf("stats %+v before NATS is up, want 3 messages not forwarded", st)
	}

	ns := startNATS(t, port)
	brokertest.Eventually(t, "connected", func() bool { return br.Stats().Connected })
	b := startBroker(t, url)
	remote := connect(t, b, ident("late-remote"))
	waitInterest(t, ns, map[*node][]string{a: {"events", sub.ident, pub.ident}, b: {remote.ident}})
	remote.publish("events", "remote")
	if from, got := sub.next(); from != remote.ident || got != "remote" {
		t.Fatalf("got %q from %s", got, from)
	}
}

// A NATS peer that accepts but stops reading (here a proxy that stalls)
// never holds a publisher: local delivery goes on at full speed, and what
// the cluster cannot take is dropped and counted.
func TestStalledNATSDoesNotBlockPublishers(t *testing.T) {
	ns := startNATS(t, 0)
	proxy, err := tcpproxy.New(ns.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	a := startBroker(t, "nats://"+proxy.Addr())
	// Registered after the bridge's Close, so it runs first: dropping the
	// stalled connection ends any write NATS is blocked in.
	t.Cleanup(func() { proxy.Close() })
	brokertest.Eventually(t, "connected through the proxy", func() bool { return a.bridge.Stats().Connected })
	pub := connect(t, a, ident("stall-pub"))
	local := connect(t, a, ident("stall-local"), "events")
	proxy.Stall()

	// 64 MiB: far more than the kernel's socket buffers, nats.go's buffer
	// and the bridge's 8 MiB queue can hold.
	const n, size = 256, 256 << 10
	payload := strings.Repeat("x", size)
	frame, _ := wire.AppendPublish(nil, []byte(pub.ident), []byte("events"), []byte(payload))
	go func() {
		for range n {
			if pub.write(frame) != nil {
				return
			}
		}
	}()
	local.R = wire.NewReader(local.Conn, wire.UniformLimits(1<<20))
	for i := range n {
		if _, got := local.next(); len(got) != size {
			t.Fatalf("message %d: %d bytes", i, len(got))
		}
	}
	st := a.bridge.Stats()
	if st.ForwardDropped == 0 {
		t.Fatalf("nothing dropped for the cluster while NATS was stalled: %+v", st)
	}
	t.Logf("%d messages delivered locally while NATS was stalled; bridge %+v", n, st)
}

// Close returns once the interest goroutine has stopped: nothing it does
// afterwards can fail on the closed connection and log about it.
func TestCloseStopsInterestSync(t *testing.T) {
	ns := startNATS(t, 0)
	var channels []string
	for i := range 300 {
		channels = append(channels, fmt.Sprintf("chan%d", i))
	}
	users.Put(auth.User{Ident: "many", Secret: "s", PubChans: []string{"many"}, SubChans: append(channels, "many")})
	for round := range 10 {
		log := &brokertest.Log{}
		br, err := cluster.New(cluster.Options{URLs: natsURL(ns), Prefix: prefix, Name: "closing", Logger: log.Logger()})
		if err != nil {
			t.Fatal(err)
		}
		srv := brokertest.Start(t, users, func(c *broker.Config) { c.Bridge = br })
		// Not attached yet: the bridge notes the 300 channels and waits.
		connect(t, &node{srv: srv, bridge: br}, "many", channels...)
		br.Attach(srv.Broker) // one pass subscribing to all 300 starts
		br.Close()
		after := log.String()
		time.Sleep(100 * time.Millisecond)
		// (nats.go reports the closed connection itself, at info, later.)
		if extra := strings.TrimPrefix(log.String(), after); strings.Contains(extra, "level=ERROR") || strings.Contains(extra, "level=WARN") {
			t.Fatalf("round %d: errors logged after Close returned:\n%s", round, extra)
		}
	}
}

// A message that reaches no subscriber on any broker is counted as
// undelivered on the broker it was published on; one that a subscriber on
// another broker gets is not.
func TestUndeliveredAcrossBrokers(t *testing.T) {
	ns := startNATS(t, 0)
	a, b := startBroker(t, natsURL(ns)), startBroker(t, natsURL(ns))
	id := ident("undelivered-pub")
	users.Put(auth.User{Ident: id, Secret: "s", PubChans: []string{"events", "nobody", id}, SubChans: []string{id}})
	p := connect(t, a, id)
	waitInterest(t, ns, map[*node][]string{a: {id}, b: nil})
	count := func(channel string) uint64 { return a.srv.Broker.Snapshot().Undelivered[channel] }
	for range 5 {
		p.publish("events", "lost")
	}
	brokertest.Eventually(t, "5 undelivered on a", func() bool { return count("events") == 5 })

	sub := connect(t, b, ident("undelivered-sub"), "events")
	waitInterest(t, ns, map[*node][]string{a: {id}, b: {"events", sub.ident}})
	for range 3 {
		p.publish("events", "heard")
	}
	for range 3 {
		if _, got := sub.next(); got != "heard" {
			t.Fatalf("got %q", got)
		}
	}
	// NATS answers in order: once the answer for a message published
	// after them is counted, any for the delivered ones would be too.
	p.publish("nobody", "barrier")
	brokertest.Eventually(t, "the barrier counted", func() bool { return count("nobody") == 1 })
	if n := count("events"); n != 5 {
		t.Errorf("undelivered %d after a subscriber on b got them, want still 5", n)
	}
	if n := b.srv.Broker.Snapshot().Undelivered["events"]; n != 0 {
		t.Errorf("b counted %d messages it received", n)
	}
}
