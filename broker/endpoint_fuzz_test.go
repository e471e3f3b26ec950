package broker

import (
	"strings"
	"testing"
)

// FuzzParseEndpoint: any -e string parses or is refused with a message;
// what parses is a usable endpoint.
func FuzzParseEndpoint(f *testing.F) {
	for _, s := range []string{
		"tcp:port=10000", "tcp:interface=127.0.0.1:port=10000", "tcp:interface=\\:\\:1:port=0",
		"tcp:interface=[::1]:port=0", "tls:port=10000:key=broker.key:cert=broker.crt",
		"tcp:port=20000:device=lan0", "tcp:port=1:mode=publish", "tcp:port=1:mode=subscribe",
		"tcp", "tcp:", "tcp:port", "tcp:port=", "tcp:port=-1", "tcp:port=65536", "tcp:port=99999999999999999999",
		"tcp:port=1:port=2", "tcp:bogus=1:port=1", "udp:port=1", "port=10000", "tcp:interface=[::1:port=1",
		"tcp:interface=\\", "tcp:port=1:mode=both", ":::", "\\:\\:", "tls:port=1:cert=:key=",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e, err := ParseEndpoint(s)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		if e.Class != "tcp" && e.Class != "tls" {
			t.Fatalf("%q: class %q accepted", s, e.Class)
		}
		if e.Port < 0 || e.Port > 65535 {
			t.Fatalf("%q: port %d accepted", s, e.Port)
		}
		if e.Class == "tcp" && (e.Cert != "" || e.Key != "") {
			t.Fatalf("%q: tcp with a certificate", s)
		}
		if strings.ContainsAny(e.Device, "\x00/ \t\n") {
			t.Fatalf("%q: device name the kernel would misread", s)
		}
	})
}
