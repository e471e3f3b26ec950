package main

import (
	"bytes"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/wire"
)

// rawLogin connects to addr, logs in as ident with secret "s" and
// subscribes to channels; its reader accepts frames up to 8 MiB. The
// SUBSCRIBE frames are followed by a PUBLISH to the ident's own channel,
// awaited, so the broker has read them when rawLogin returns.
func rawLogin(t *testing.T, addr, ident string, channels ...string) (net.Conn, *wire.Reader) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	rd := wire.NewReader(nc, wire.UniformLimits(8<<20))
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	info, err := rd.Next()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := wire.AppendAuth(nil, info.Payload, ident, "s")
	for _, ch := range append(channels, ident) {
		b, _ = wire.AppendSubscribe(b, []byte(ident), []byte(ch))
	}
	b, _ = wire.AppendPublish(b, []byte(ident), []byte(ident), []byte("sync"))
	nc.Write(b)
	for {
		f, err := rd.Next()
		if err != nil {
			t.Fatalf("%s: %v", ident, err)
		}
		if f.Op == wire.OpError {
			t.Fatalf("%s: broker error %q", ident, f.Payload)
		}
		if string(f.Channel) == ident {
			return nc, rd
		}
	}
}

// payloadFor returns a payload making a PUBLISH body of n bytes.
func payloadFor(ident, channel string, n int) []byte {
	return bytes.Repeat([]byte("x"), n-2-len(ident)-len(channel))
}

// By default a PUBLISH body may be 1 MiB, the reference's limit: a larger
// one drops its publisher and reaches nobody (a Python subscriber would
// drop its own connection on it); --max-publish-size raises the limit.
func TestMaxPublishSizeDefault(t *testing.T) {
	clusterUser("big")
	clusterUser("bigsub")
	for _, c := range []struct {
		args      []string
		delivered bool
	}{{nil, false}, {[]string{"--max-publish-size=2097152"}, true}} {
		b := startClusterBroker(t, c.args...)
		sub, rd := rawLogin(t, b.addr, "bigsub", "events")
		pub, _ := rawLogin(t, b.addr, "big")
		for _, n := range []int{1 << 20, 1<<20 + 1} {
			frame, _ := wire.AppendPublish(nil, []byte("big"), []byte("events"), payloadFor("big", "events", n))
			pub.Write(frame)
		}
		// The marker follows on a connection whose frames come after
		// those above: the publisher's own, or, once the broker has
		// closed the publisher, the subscriber's.
		marker, _ := wire.AppendPublish(nil, []byte("big"), []byte("events"), []byte("marker"))
		if c.delivered {
			pub.Write(marker)
		} else {
			pub.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadAll(pub); err != nil && !strings.Contains(err.Error(), "reset") {
				t.Fatalf("publisher of an oversized body not closed: %v", err)
			}
			marker, _ = wire.AppendPublish(nil, []byte("bigsub"), []byte("events"), []byte("marker"))
			sub.Write(marker)
		}
		var sizes []int
		sub.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			f, err := rd.Next()
			if err != nil {
				t.Fatal(err)
			}
			if string(f.Payload) == "marker" {
				break
			}
			sizes = append(sizes, len(f.Payload)+2+len(f.Ident)+len(f.Channel))
		}
		want := []int{1 << 20}
		if c.delivered {
			want = append(want, 1<<20+1)
		}
		if !slices.Equal(sizes, want) {
			t.Errorf("%v: delivered bodies of %v bytes, want %v", c.args, sizes, want)
		}
	}
}

// A plaintext client on a TLS endpoint is logged at INFO, once per
// address within 10 s: one that waits for INFO in silence (as hpfeeds
// clients do) and one that sends a frame.
func TestPlaintextClientOnTLSEndpoint(t *testing.T) {
	dir := t.TempDir()
	writeCert(t, dir)
	p := startBroker(t, false, "--auth=env", "--auth-timeout=1s",
		"-e", "tls:interface=127.0.0.1:port=0:cert="+filepath.Join(dir, "broker.crt")+":key="+filepath.Join(dir, "broker.key"))
	for _, send := range []string{"", "\x00\x00\x00\x05\x02"} {
		nc, err := net.Dial("tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		nc.Write([]byte(send))
		nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadAll(nc); err != nil {
			t.Fatalf("not closed: %v", err)
		}
		nc.Close()
	}
	log := p.stopAndLog()
	lines := regexp.MustCompile(`(?m)^.*plaintext client on a TLS endpoint.*$`).FindAllString(log, -1)
	if len(lines) != 1 || !strings.Contains(lines[0], "level=INFO") || !strings.Contains(lines[0], "peer=127.0.0.1:") {
		t.Fatalf("want one INFO line about the plaintext client, got %q in:\n%s", lines, log)
	}
}

// While NATS is down, the log says what a failed forward means for
// delivery, not nats.go's "outbound buffer limit exceeded".
func TestClusterForwardFailureWording(t *testing.T) {
	addr, nats := startNATS(t)
	clusterUser("fwd")
	p := startBroker(t, false, "--auth=env", "-e", "tcp:interface=127.0.0.1:port=0", "--cluster=nats://"+addr)
	pub, _ := rawLogin(t, p.addr, "fwd")
	nats.Process.Kill()
	nats.Wait()
	frame, _ := wire.AppendPublish(nil, []byte("fwd"), []byte("events"), []byte("x"))
	for range 20 {
		pub.Write(frame)
		time.Sleep(50 * time.Millisecond)
	}
	log := p.stopAndLog()
	want := `msg="cluster: not forwarding to NATS: messages published here reach only this broker's subscribers, and other brokers' subscribers miss them (they are not kept for later), until forwarding resumes" reason="the NATS connection is down and being re-made"`
	if !strings.Contains(log, want) || strings.Contains(log, "outbound buffer limit") {
		t.Fatalf("log lacks %s:\n%s", want, log)
	}
}

// Bucket bounds are spelled as docs/metrics.md says client_golang writes
// them: integers up to 524288, exponent form from 1 MiB on.
func TestBucketSpelling(t *testing.T) {
	clusterUser("buckets")
	p := startBroker(t, true, "--auth=env", "-e", "tcp:interface=127.0.0.1:port=0", "--exporter=127.0.0.1:0")
	rawLogin(t, p.addr, "buckets")
	_, body := get(t, "http://"+p.exporter+"/metrics")
	for _, le := range []string{"1024", "524288", "1.048576e+06", "4.194304e+06", "+Inf"} {
		if !strings.Contains(body, `hpfeeds_broker_receive_publish_size_bucket{chan="buckets",ident="buckets",le="`+le+`"}`) {
			t.Errorf("no bucket le=%q in:\n%s", le, body)
		}
	}
	doc, _ := os.ReadFile("../../docs/metrics.md")
	if !strings.Contains(string(doc), "`le=\"1.048576e+06\"`") {
		t.Error("docs/metrics.md does not give the spelling of large bounds")
	}
}
