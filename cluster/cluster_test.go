package cluster_test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
	"github.com/hpfeeds-go/hpfeeds/cluster"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

func TestSubject(t *testing.T) {
	seen := map[string]string{}
	for _, ch := range []string{"", "a", "a.b", "a*", ">", "a b", "\x00\xff", "dionaea.capture", "c", "cc"} {
		s := cluster.Subject("hpfeeds", ch)
		if prev, dup := seen[s]; dup {
			t.Fatalf("%q and %q both map to %s", prev, ch, s)
		}
		seen[s] = ch
		tokens := s[len("hpfeeds."):]
		for _, r := range tokens {
			if r == '.' || r == '*' || r == '>' || r == ' ' {
				t.Fatalf("%q maps to %q", ch, s)
			}
		}
		if tokens == "" {
			t.Fatalf("%q maps to an empty token", ch)
		}
	}
}

// natsServer runs the machine's nats-server on a free loopback port.
type natsServer struct {
	t    *testing.T
	port int
	cmd  *exec.Cmd
}

func startNATS(t *testing.T, port int) *natsServer {
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("nats-server not installed (apt-get install nats-server): %v", err)
		}
		t.Skipf("nats-server not installed; apt-get install nats-server")
	}
	if port == 0 {
		l, _ := net.Listen("tcp", "127.0.0.1:0")
		port = l.Addr().(*net.TCPAddr).Port
		l.Close()
	}
	n := &natsServer{t: t, port: port, cmd: exec.Command(bin, "-a", "127.0.0.1", "-p", strconv.Itoa(port))}
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.stop)
	for i := 0; i < 200; i++ {
		if c, err := net.Dial("tcp", n.addr()); err == nil {
			c.Close()
			return n
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatal("nats-server did not start")
	return nil
}

func (n *natsServer) addr() string { return "127.0.0.1:" + strconv.Itoa(n.port) }

func (n *natsServer) stop() {
	if n.cmd.Process != nil {
		n.cmd.Process.Kill()
		n.cmd.Wait()
	}
}

var users = brokertest.NewUsers(auth.User{Ident: "sensor", Secret: "s", PubChans: []string{"events", "probe"}, SubChans: []string{"events", "probe"}})

type node struct {
	srv    *brokertest.Server
	bridge *cluster.Bridge
}

func startBroker(t *testing.T, natsAddr string) *node {
	br, err := cluster.New(cluster.Options{URLs: "nats://" + natsAddr, Prefix: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(br.Close)
	if err := br.WaitConnected(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	srv := brokertest.Start(t, users, func(c *broker.Config) { c.Bridge = br })
	br.Attach(srv.Broker)
	return &node{srv: srv, bridge: br}
}

type client struct {
	t  *testing.T
	nc net.Conn
	rd *wire.Reader
}

func connect(t *testing.T, addr string, subscribe ...string) *client {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	c := &client{t: t, nc: nc, rd: wire.NewReader(nc, wire.UniformLimits(1<<20))}
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	info, err := c.rd.Next()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := wire.AppendAuth(nil, info.Payload, "sensor", "s")
	for _, ch := range subscribe {
		b, _ = wire.AppendSubscribe(b, []byte("sensor"), []byte(ch))
	}
	nc.Write(b)
	return c
}

func (c *client) publish(channel, payload string) {
	b, _ := wire.AppendPublish(nil, []byte("sensor"), []byte(channel), []byte(payload))
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatal(err)
	}
}

// next returns the next message's payload, skipping probes.
func (c *client) next() string {
	c.t.Helper()
	for {
		c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		f, err := c.rd.Next()
		if err != nil {
			c.t.Fatalf("reading: %v", err)
		}
		if f.Op != wire.OpPublish {
			c.t.Fatalf("got %v %q", f.Op, f.Payload)
		}
		if string(f.Channel) != "probe" {
			return string(f.Payload)
		}
	}
}

// silent checks that nothing but probes arrives for a while.
func (c *client) silent() {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	for {
		f, err := c.rd.Next()
		if err != nil {
			return
		}
		if string(f.Channel) != "probe" {
			c.t.Fatalf("unexpected %q on %q", f.Payload, f.Channel)
		}
	}
}

var probes atomic.Uint64

// linked waits until a probe from pub reaches sub: interest crosses
// brokers asynchronously. Probes carry a token per call, so a late probe
// of an earlier call cannot pass for a link.
func linked(t *testing.T, pub, sub *client) {
	t.Helper()
	token := fmt.Sprintf("p%d-", probes.Add(1))
	for i := 0; i < 200; i++ {
		pub.publish("probe", token+strconv.Itoa(i))
		sub.nc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		for {
			f, err := sub.rd.Next()
			if err != nil {
				break
			}
			if string(f.Channel) == "probe" && strings.HasPrefix(string(f.Payload), token) {
				return
			}
		}
	}
	t.Fatal("brokers never linked")
}

// Three brokers, publishers and subscribers spread over them: every
// subscriber gets every message once, in each publisher's order.
func TestThreeBrokersExactlyOnce(t *testing.T) {
	ns := startNATS(t, 0)
	var nodes []*node
	for i := 0; i < 3; i++ {
		nodes = append(nodes, startBroker(t, ns.addr()))
	}
	var subs []*client
	for _, n := range nodes {
		for j := 0; j < 2; j++ {
			subs = append(subs, connect(t, n.srv.Addr, "events", "probe"))
		}
	}
	pubs := []*client{connect(t, nodes[0].srv.Addr), connect(t, nodes[1].srv.Addr)}
	for _, p := range pubs {
		for _, s := range subs {
			linked(t, p, s)
		}
	}
	const n = 500
	for i := 0; i < n; i++ {
		for pi, p := range pubs {
			p.publish("events", fmt.Sprintf("%d-%d", pi, i))
		}
	}
	for si, s := range subs {
		want := [2]int{}
		for k := 0; k < 2*n; k++ {
			var pi, i int
			fmt.Sscanf(s.next(), "%d-%d", &pi, &i)
			if i != want[pi] {
				t.Fatalf("subscriber %d: message %d from publisher %d, want %d", si, i, pi, want[pi])
			}
			want[pi]++
		}
		s.silent()
	}
	var forwarded, received uint64
	for _, nd := range nodes {
		st := nd.bridge.Stats()
		forwarded += st.Forwarded
		received += st.Received
	}
	if forwarded < 2*n || received < 2*2*n {
		t.Errorf("forwarded %d, received %d", forwarded, received)
	}
}

// A publisher subscribed to its own channel gets its message once, and so
// does the same ident subscribed on another broker.
func TestSelfDeliveryAcrossBrokers(t *testing.T) {
	ns := startNATS(t, 0)
	a, b := startBroker(t, ns.addr()), startBroker(t, ns.addr())
	self := connect(t, a.srv.Addr, "events", "probe")
	other := connect(t, b.srv.Addr, "events", "probe")
	linked(t, self, other)
	self.publish("events", "mine")
	if got := self.next(); got != "mine" {
		t.Fatalf("self got %q", got)
	}
	if got := other.next(); got != "mine" {
		t.Fatalf("other got %q", got)
	}
	self.silent()
	other.silent()
}

// NATS going away stops only forwarding; when it returns, interest is
// restored and messages cross again. A broker shut down leaves the others
// working.
func TestNATSRestartAndBrokerLoss(t *testing.T) {
	ns := startNATS(t, 0)
	a, b, c := startBroker(t, ns.addr()), startBroker(t, ns.addr()), startBroker(t, ns.addr())
	localSub := connect(t, a.srv.Addr, "events", "probe")
	remoteSub := connect(t, b.srv.Addr, "events", "probe")
	thirdSub := connect(t, c.srv.Addr, "events", "probe")
	pub := connect(t, a.srv.Addr)
	linked(t, pub, remoteSub)
	linked(t, pub, thirdSub)

	ns.stop()
	for a.bridge.Stats().Connected {
		time.Sleep(10 * time.Millisecond)
	}
	pub.publish("events", "during outage")
	if got := localSub.next(); got != "during outage" {
		t.Fatalf("local subscriber got %q", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for a.bridge.Stats().ForwardFailed == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if a.bridge.Stats().ForwardFailed == 0 {
		t.Fatal("the message that could not be forwarded was not counted")
	}

	startNATS(t, ns.port)
	linked(t, pub, remoteSub) // interest restored with no new SUBSCRIBE
	pub.publish("events", "after restart")
	if got := remoteSub.next(); got != "after restart" {
		t.Fatalf("remote subscriber got %q", got)
	}

	// Broker b goes; a and c keep exchanging.
	if err := b.srv.Broker.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	linked(t, pub, thirdSub)
	pub.publish("events", "after broker loss")
	for {
		if got := thirdSub.next(); got == "after broker loss" {
			break
		}
	}
}
