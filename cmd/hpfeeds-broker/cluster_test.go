package main

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/auth/storetest"
	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

func TestClusterCheckConfig(t *testing.T) {
	nats := storetest.NATS(t)
	code, out := run(t, nil, "--check-config", "--auth=env", "-e", "tcp:interface=127.0.0.1:port=0",
		"--cluster=nats://u:hidden@"+nats, "--cluster-prefix=check")
	if code != 0 || !strings.Contains(out, "cluster: nats://u:xxxxx@"+nats+" (subjects check.>)") {
		t.Fatalf("exit %d: %s", code, out)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--cluster=nats://127.0.0.1:1"}, "--cluster=nats://127.0.0.1:1: no NATS server reachable: dial tcp 127.0.0.1:1: connect: connection refused (is nats-server running"},
		{[]string{"--cluster=nats://" + nats, "--cluster-prefix=a.*"}, "cluster subject prefix"},
		{[]string{"--cluster=nats://" + nats, "--cluster-ca=/nonexistent/ca.pem"}, "ca.pem"},
	} {
		code, out := run(t, nil, append([]string{"--check-config", "--auth=env", "-e", "tcp:interface=127.0.0.1:port=0"}, c.args...)...)
		if lines := strings.Split(strings.TrimSpace(out), "\n"); code == 0 || !strings.Contains(out, c.want) || len(lines) != 1 {
			t.Errorf("%v: exit %d, output:\n%s\nwant one line mentioning %q", c.args, code, out, c.want)
		}
	}
}

// clusterBroker is one hpfeeds-broker process joined to NATS.
type clusterBroker struct {
	cmd            *exec.Cmd
	addr, exporter string
	startLog       []string // what it logged until it listened
}

var clusterUsers = []string{"HPFEEDS_TEST_SECRET=s"}

func clusterUser(ident string) string {
	up := strings.ToUpper(ident)
	clusterUsers = append(clusterUsers, "HPFEEDS_"+up+"_SECRET=s",
		"HPFEEDS_"+up+"_PUBCHANS=events,"+ident, "HPFEEDS_"+up+"_SUBCHANS=events,"+ident)
	return ident
}

func startClusterBroker(t *testing.T, args ...string) *clusterBroker {
	t.Helper()
	cmd := exec.Command(binary, append([]string{"--auth=env", "-e", "tcp:interface=127.0.0.1:port=0", "--exporter=127.0.0.1:0"}, args...)...)
	cmd.Env = append(os.Environ(), clusterUsers...)
	cmd.Dir = t.TempDir()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	b := &clusterBroker{cmd: cmd}
	sc := bufio.NewScanner(stderr)
	for (b.addr == "" || b.exporter == "") && sc.Scan() {
		b.startLog = append(b.startLog, sc.Text())
		if m := listening.FindStringSubmatch(sc.Text()); m != nil {
			b.addr = m[1]
		}
		if m := servingMetrics.FindStringSubmatch(sc.Text()); m != nil {
			b.exporter = m[1]
		}
	}
	if b.addr == "" || b.exporter == "" {
		t.Fatalf("broker never logged its addresses (endpoint %q, exporter %q)", b.addr, b.exporter)
	}
	go io.Copy(io.Discard, stderr)
	return b
}

// metric reads one unlabelled series from the broker's exporter.
func (b *clusterBroker) metric(t *testing.T, name string) float64 {
	t.Helper()
	_, body := get(t, "http://"+b.exporter+"/metrics")
	m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no %s in /metrics", name)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

type wireClient struct {
	*brokertest.Client
	ident string
	mu    sync.Mutex // guards writes from publishing goroutines
}

// dialAs logs in as ident and subscribes to channels and to the ident's
// own channel; it returns once the broker has read the SUBSCRIBE frames.
func dialAs(t *testing.T, addr, ident string, channels ...string) *wireClient {
	t.Helper()
	c := &wireClient{Client: brokertest.Login(t, addr, ident, "s"), ident: ident}
	c.SubscribeOwn(ident, channels...)
	return c
}

func (c *wireClient) publish(payload string) error {
	b, _ := wire.AppendPublish(nil, []byte(c.ident), []byte("events"), []byte(payload))
	c.mu.Lock()
	defer c.mu.Unlock()
	_, err := c.Conn.Write(b)
	return err
}

// next returns the next message on events; wait bounds the wait.
func (c *wireClient) next(wait time.Duration) (from, payload string, ok bool) {
	for {
		c.Conn.SetReadDeadline(time.Now().Add(wait))
		f, err := c.R.Next()
		if err != nil {
			return "", "", false
		}
		if string(f.Channel) == "events" {
			return string(f.Ident), string(f.Payload), true
		}
	}
}

// linked publishes probes from pub until sub hears one: interest crosses
// the cluster asynchronously. Probes carry a token per call, so a late
// probe of an earlier call cannot pass for this link.
func linked(t *testing.T, pub, sub *wireClient) {
	t.Helper()
	var b [8]byte
	rand.Read(b[:])
	token := "probe-" + hex.EncodeToString(b[:])
	for range 200 {
		if err := pub.publish(token); err != nil {
			t.Fatal(err)
		}
		for {
			from, payload, ok := sub.next(50 * time.Millisecond)
			if !ok {
				break
			}
			if from == pub.ident && payload == token {
				return
			}
		}
	}
	t.Fatalf("%s never heard %s", sub.ident, pub.ident)
}

// receive reads until sub has want[ident] messages from each publisher,
// checking each publisher's order and skipping probes; counts carries on
// from earlier calls.
func receive(t *testing.T, sub *wireClient, counts, want map[string]int) {
	t.Helper()
	for ident, n := range want {
		for counts[ident] < n {
			from, payload, ok := sub.next(10 * time.Second)
			if !ok {
				t.Fatalf("%s: %d of %d messages from %s, then nothing", sub.ident, counts[ident], n, ident)
			}
			if strings.HasPrefix(payload, "probe-") {
				continue
			}
			if _, known := want[from]; !known || payload != strconv.Itoa(counts[from]) {
				t.Fatalf("%s: %q from %s, want %d", sub.ident, payload, from, counts[from])
			}
			counts[from]++
		}
	}
}

// Three broker processes joined through the test nats-server (storetest.NATS):
// subscribers on each get every message from publishers on each exactly
// once, the exporter counts the traffic, and a broker killed mid-run
// (SIGKILL) leaves the other two exchanging.
func TestClusterIntegration(t *testing.T) {
	nats := storetest.NATS(t)
	// A prefix of its own keeps this run apart from anything else on the
	// shared NATS.
	var r [6]byte
	rand.Read(r[:])
	prefix := "hpfeeds-test-" + hex.EncodeToString(r[:])
	var brokers []*clusterBroker
	var pubs, subs []*wireClient
	idents := make([][3]string, 3)
	for i := range idents {
		idents[i] = [3]string{clusterUser(fmt.Sprintf("pub%d", i)), clusterUser(fmt.Sprintf("sub%da", i)), clusterUser(fmt.Sprintf("sub%db", i))}
	}
	for i := range 3 {
		b := startClusterBroker(t, "--cluster=nats://"+nats, "--cluster-prefix="+prefix, fmt.Sprintf("--name=broker%d", i))
		brokers = append(brokers, b)
		pubs = append(pubs, dialAs(t, b.addr, idents[i][0]))
		subs = append(subs, dialAs(t, b.addr, idents[i][1], "events"), dialAs(t, b.addr, idents[i][2], "events"))
	}
	for _, p := range pubs {
		for _, s := range subs {
			linked(t, p, s)
		}
	}

	const msgs = 1000
	for i := range msgs {
		for _, p := range pubs {
			if err := p.publish(strconv.Itoa(i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	counts := map[*wireClient]map[string]int{}
	want := map[string]int{}
	for _, p := range pubs {
		want[p.ident] = msgs
	}
	for _, s := range subs {
		counts[s] = map[string]int{}
		receive(t, s, counts[s], want)
	}
	for _, s := range subs {
		if from, payload, ok := s.next(300 * time.Millisecond); ok {
			t.Fatalf("%s: unexpected %q from %s", s.ident, payload, from)
		}
	}
	for i, b := range brokers {
		if v := b.metric(t, "hpfeeds_broker_cluster_connected"); v != 1 {
			t.Errorf("broker%d: connected %v", i, v)
		}
		if v := b.metric(t, "hpfeeds_broker_cluster_messages_forwarded_total"); v < msgs {
			t.Errorf("broker%d: forwarded %v, want at least %d", i, v, msgs)
		}
		if v := b.metric(t, "hpfeeds_broker_cluster_messages_received_total"); v < 2*msgs {
			t.Errorf("broker%d: received %v, want at least %d", i, v, 2*msgs)
		}
		if v := b.metric(t, "hpfeeds_broker_cluster_messages_forward_failed_total"); v != 0 {
			t.Errorf("broker%d: %v messages not forwarded", i, v)
		}
	}

	// Broker 1 dies while brokers 0 and 2 carry on publishing.
	var wg sync.WaitGroup
	for _, p := range []*wireClient{pubs[0], pubs[2]} {
		wg.Go(func() {
			for i := msgs; i < 2*msgs; i++ {
				if err := p.publish(strconv.Itoa(i)); err != nil {
					t.Error(err)
					return
				}
				if i%10 == 9 {
					time.Sleep(time.Millisecond)
				}
			}
		})
	}
	if err := brokers[1].cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	survivors := []*wireClient{subs[0], subs[1], subs[4], subs[5]}
	for _, s := range survivors {
		receive(t, s, counts[s], map[string]int{pubs[0].ident: 2 * msgs, pubs[2].ident: 2 * msgs})
	}
	for _, s := range survivors {
		if from, payload, ok := s.next(300 * time.Millisecond); ok {
			t.Fatalf("%s: unexpected %q from %s", s.ident, payload, from)
		}
	}
}

// The cluster example's NATS configuration is one nats-server accepts.
func TestClusterExampleNATSConfig(t *testing.T) {
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		t.Fatalf("nats-server not installed (make deps, or apt-get install nats-server): %v", err)
	}
	cmd := exec.Command(bin, "-t", "-c", "../../examples/cluster/nats.conf")
	cmd.Env = append(os.Environ(), "NATS_NAME=nats1", "NATS_PASSWORD=secret")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
}

// The cluster example's NATS configuration lets the brokers keep and
// replay retained channels (JetStream on; the user allowed its API, the
// positions' bucket and replies), with no warning from --check-config. It
// runs here as one node: its cluster block removed, its store in the
// test's directory, its port a free one.
func TestClusterExampleRetains(t *testing.T) {
	data, err := os.ReadFile("../../examples/cluster/nats.conf")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	conf := regexp.MustCompile(`(?s)\ncluster \{.*?\n\}\n`).ReplaceAllString(string(data), "\n")
	conf = strings.ReplaceAll(conf, "$NATS_NAME", "nats1")
	conf = strings.ReplaceAll(conf, "$NATS_PASSWORD", "secret")
	if conf == string(data) || !strings.Contains(conf, "store_dir: /data\n") {
		t.Fatalf("the example no longer has the cluster block or the store this test replaces:\n%s", data)
	}
	conf = strings.Replace(conf, "store_dir: /data\n", "store_dir: "+dir+"/jetstream\n", 1)
	if err := os.WriteFile(dir+"/nats.conf", []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	natsAddr, _ := startNATS(t, "-c", dir+"/nats.conf")
	clusterUser("elogger")
	clusterUser("esensor")
	t.Parallel() // after clusterUser: it appends to a shared list
	args := []string{"--cluster=nats://" + natsAddr, "--cluster-user=hpfeeds", "--cluster-password=secret"}
	code, out := run(t, clusterUsers, append([]string{"--auth=env", "-e", "tcp:interface=127.0.0.1:port=0",
		"--check-config", "--retain=events"}, args...)...)
	if code != 0 || strings.Contains(out, "warning") || !strings.Contains(out, "on the cluster's JetStream") {
		t.Errorf("--check-config --retain on the example's NATS: exit %d: %s", code, out)
	}
	a, b := retainBroker(t, t.TempDir(), args...), retainBroker(t, t.TempDir(), args...)
	missWhileAway(t, a.addr, "elogger", "esensor", 200)
	time.Sleep(100 * time.Millisecond)
	r := &reader{t: t, c: resubscribe(t, b.addr, "elogger")}
	r.until(199)
}

// A default broker with a default nats-server (max_payload 1 MiB): no
// warning in --check-config or at start, and a message of the largest
// PUBLISH body the broker takes crosses to the other broker. A larger
// --max-publish-size is warned of.
func TestClusterDefaultsQuiet(t *testing.T) {
	nats, _ := startNATS(t)
	pubIdent, subIdent := clusterUser("big-pub"), clusterUser("big-sub")
	args := []string{"--auth=env", "-e", "tcp:interface=127.0.0.1:port=0", "--cluster=nats://" + nats}
	if code, out := run(t, clusterUsers, append(args, "--check-config")...); code != 0 || strings.Contains(out, "warning") {
		t.Errorf("--check-config: exit %d: %s", code, out)
	}
	if _, out := run(t, clusterUsers, append(args, "--check-config", "--max-publish-size=2097152")...); !strings.Contains(out, "max_payload is below the largest PUBLISH") {
		t.Errorf("--check-config --max-publish-size=2MiB: no warning: %s", out)
	}
	a, b := startBroker(t, false, args...), startBroker(t, false, args...)
	pub, sub := dialAs(t, a.addr, pubIdent), dialAs(t, b.addr, subIdent, "events")
	linked(t, pub, sub)
	payload := strings.Repeat("x", broker.DefaultMaxPublishSize-2-len(pubIdent)-len("events"))
	if err := pub.publish(payload); err != nil {
		t.Fatal(err)
	}
	for {
		from, got, ok := sub.next(10 * time.Second)
		if !ok {
			t.Fatal("the largest message never crossed the cluster")
		}
		if from == pubIdent && got == payload {
			break
		}
	}
	for _, p := range []*brokerProcess{a, b} {
		if log := p.stopAndLog(); strings.Contains(log, "level=WARN") {
			t.Errorf("start warned:\n%s", log)
		}
	}
}
