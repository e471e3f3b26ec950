package broker_test

import (
	"context"
	"strings"
	"testing"

	"github.com/hpfeeds-go/hpfeeds/broker"
)

func TestParseEndpoint(t *testing.T) {
	for _, c := range []struct {
		in   string
		want broker.Endpoint
		addr string
	}{
		{"tcp:port=10000", broker.Endpoint{Class: "tcp", Port: 10000}, ":10000"},
		{"tcp:interface=127.0.0.1:port=10000", broker.Endpoint{Class: "tcp", Interface: "127.0.0.1", Port: 10000}, "127.0.0.1:10000"},
		{`tcp:interface=\:\:1:port=20000`, broker.Endpoint{Class: "tcp", Interface: "::1", Port: 20000}, "[::1]:20000"},
		{"tcp:interface=[::1]:port=20000", broker.Endpoint{Class: "tcp", Interface: "::1", Port: 20000}, "[::1]:20000"},
		{"tcp:interface=[fe80::1%eth0]:port=1", broker.Endpoint{Class: "tcp", Interface: "fe80::1%eth0", Port: 1}, "[fe80::1%eth0]:1"},
		{"tls:port=10000:key=broker.key:cert=broker.crt", broker.Endpoint{Class: "tls", Port: 10000, Cert: "broker.crt", Key: "broker.key"}, ":10000"},
		{"tls:port=443", broker.Endpoint{Class: "tls", Port: 443, Cert: "cert.pem", Key: "key.pem"}, ":443"},
		{`tls:port=1:cert=C\:\\certs\\b.crt:key=k`, broker.Endpoint{Class: "tls", Port: 1, Cert: `C:\\certs\\b.crt`, Key: "k"}, ":1"},
		{"tcp:port=20000:device=lan0", broker.Endpoint{Class: "tcp", Port: 20000, Device: "lan0"}, ":20000"},
		{"tcp:port=0", broker.Endpoint{Class: "tcp", Port: 0}, ":0"},
		{"tcp:port=1:mode=publish", broker.Endpoint{Class: "tcp", Port: 1, Mode: broker.ModePublish}, ":1"},
		{"tcp:port=1:mode=subscribe", broker.Endpoint{Class: "tcp", Port: 1, Mode: broker.ModeSubscribe}, ":1"},
		{"tcp:port=1:mode=pubsub", broker.Endpoint{Class: "tcp", Port: 1}, ":1"},
	} {
		got, err := broker.ParseEndpoint(c.in)
		if err != nil {
			t.Errorf("%s: %v", c.in, err)
			continue
		}
		if got != c.want {
			t.Errorf("%s: got %+v, want %+v", c.in, got, c.want)
		}
		if got.Addr() != c.addr {
			t.Errorf("%s: addr %s, want %s", c.in, got.Addr(), c.addr)
		}
	}
}

func TestParseEndpointErrors(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", "empty endpoint class"},
		{"udp:port=1", `unknown class "udp"`},
		{"port=10000", `unknown class "port=10000"`},
		{"tcp", "no port"},
		{"tcp:interface=127.0.0.1", "no port"},
		{"tcp:port=abc", "not a number"},
		{"tcp:port=65536", "not a number"},
		{"tcp:port=-1", "not a number"},
		{"tcp:port=1:port=2", "port given twice"},
		{"tcp:port=1:bogus=2", `unknown key "bogus"`},
		{"tcp:port=1:privateKey=x", `unknown key "privateKey"`},
		{"tcp:port=1:novalue", "not key=value"},
		{"tcp:port=1:cert=a", "need class tls"},
		{"tcp:port=1:mode=push", "mode"},
		{"tcp:port=1:device=averyveryverylongname", "1 to 15 bytes"},
		{"tcp:interface=[::1:port=1", "unbalanced"},
		{"tcp:interface=::1]:port=1", "unbalanced"},
	} {
		_, err := broker.ParseEndpoint(c.in)
		if err == nil {
			t.Errorf("%q accepted", c.in)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %q does not say %q", c.in, err, c.want)
		}
	}
}

func listenSpec(spec string) (*broker.Listener, error) {
	ep, err := broker.ParseEndpoint(spec)
	if err != nil {
		return nil, err
	}
	return broker.Listen(context.Background(), ep, nil)
}

func TestListenIPv6AndDevice(t *testing.T) {
	l, err := listenSpec(`tcp:interface=\:\:1:port=0`)
	if err != nil {
		t.Fatalf("listening on the IPv6 loopback: %v", err)
	}
	l.Close()
	// SO_BINDTODEVICE on the loopback device: works as root, and otherwise
	// must fail with an error naming the device, never silently.
	l, err = listenSpec("tcp:interface=127.0.0.1:port=0:device=lo")
	if err != nil {
		if !strings.Contains(err.Error(), "device lo") {
			t.Fatalf("error does not name the device: %v", err)
		}
		return
	}
	l.Close()
	if _, err := listenSpec("tcp:interface=127.0.0.1:port=0:device=nosuchnic0"); err == nil {
		t.Fatal("binding to a missing device succeeded")
	}
}
