package broker

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
)

// Endpoint is one listening socket, parsed from a string such as
// "tcp:interface=127.0.0.1:port=10000" or
// "tls:port=10000:cert=broker.crt:key=broker.key:mode=publish".
type Endpoint struct {
	Class     string // "tcp" or "tls"
	Interface string // address to bind; empty means every interface
	Port      int    // 0 picks a free port
	Device    string // SO_BINDTODEVICE (Linux only)
	Cert, Key string // PEM files for tls; cert may hold the chain
	Mode      Mode
}

// ParseEndpoint parses an endpoint string: a class, then key=value fields
// separated by ':'. A colon inside a value is written '\:', or the value is
// bracketed as in "interface=[::1]". Unknown classes and keys are errors
// (the Python broker silently ignored them).
func ParseEndpoint(s string) (Endpoint, error) {
	fields, err := splitEndpoint(s)
	if err != nil {
		return Endpoint{}, fmt.Errorf("endpoint %q: %w", s, err)
	}
	ep := Endpoint{Class: fields[0]}
	if ep.Class != "tcp" && ep.Class != "tls" {
		return Endpoint{}, fmt.Errorf("endpoint %q: unknown class %q (use tcp or tls)", s, ep.Class)
	}
	seen := map[string]bool{}
	for _, f := range fields[1:] {
		key, value, ok := strings.Cut(f, "=")
		if !ok {
			return Endpoint{}, fmt.Errorf("endpoint %q: field %q is not key=value", s, f)
		}
		if seen[key] {
			return Endpoint{}, fmt.Errorf("endpoint %q: %s given twice", s, key)
		}
		seen[key] = true
		switch key {
		case "interface":
			ep.Interface = strings.TrimSuffix(strings.TrimPrefix(value, "["), "]")
		case "port":
			p, err := strconv.ParseUint(value, 10, 16)
			if err != nil {
				return Endpoint{}, fmt.Errorf("endpoint %q: port %q is not a number from 0 to 65535", s, value)
			}
			ep.Port = int(p)
		case "device":
			// Linux's rules for interface names. A NUL would end the name
			// early: "\x00" would bind to no device, that is every device.
			if value == "" || len(value) > 15 || strings.ContainsAny(value, "\x00/ \t\n") {
				return Endpoint{}, fmt.Errorf("endpoint %q: device name must be 1 to 15 bytes, without '/', spaces or NUL", s)
			}
			ep.Device = value
		case "cert":
			ep.Cert = value
		case "key":
			ep.Key = value
		case "mode":
			switch value {
			case "pubsub":
				ep.Mode = ModePubSub
			case "publish":
				ep.Mode = ModePublish
			case "subscribe":
				ep.Mode = ModeSubscribe
			default:
				return Endpoint{}, fmt.Errorf("endpoint %q: mode %q must be pubsub, publish or subscribe", s, value)
			}
		default:
			return Endpoint{}, fmt.Errorf("endpoint %q: unknown key %q (known: interface, port, device, cert, key, mode)", s, key)
		}
	}
	if !seen["port"] {
		return Endpoint{}, fmt.Errorf("endpoint %q: no port (add :port=10000)", s)
	}
	if ep.Class == "tcp" && (ep.Cert != "" || ep.Key != "") {
		return Endpoint{}, fmt.Errorf("endpoint %q: cert and key need class tls", s)
	}
	if ep.Class == "tls" {
		// The Python broker's defaults.
		if ep.Cert == "" {
			ep.Cert = "cert.pem"
		}
		if ep.Key == "" {
			ep.Key = "key.pem"
		}
	}
	return ep, nil
}

// splitEndpoint splits on ':' outside brackets, honouring '\:' escapes.
func splitEndpoint(s string) ([]string, error) {
	var fields []string
	var cur strings.Builder
	depth := 0
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case ch == '\\' && i+1 < len(s) && s[i+1] == ':':
			cur.WriteByte(':')
			i++
		case ch == '[':
			depth++
			cur.WriteByte(ch)
		case ch == ']':
			if depth == 0 {
				return nil, fmt.Errorf("unbalanced ']'")
			}
			depth--
			cur.WriteByte(ch)
		case ch == ':' && depth == 0:
			fields = append(fields, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(ch)
		}
	}
	if depth != 0 {
		return nil, fmt.Errorf("unbalanced '['")
	}
	fields = append(fields, cur.String())
	if fields[0] == "" {
		return nil, fmt.Errorf("empty endpoint class")
	}
	return fields, nil
}

// Addr is the host:port to bind.
func (ep Endpoint) Addr() string {
	return net.JoinHostPort(ep.Interface, strconv.Itoa(ep.Port))
}

func (ep Endpoint) String() string {
	s := ep.Class + ":" + ep.Addr()
	if ep.Device != "" {
		s += " device=" + ep.Device
	}
	if ep.Mode != ModePubSub {
		s += " mode=" + ep.Mode.String()
	}
	return s
}

// Check verifies, without binding anything, what Listen would need: the
// interface is an address of this host, the device exists, and the TLS
// certificate and key are readable and match. Whether the port is free is
// not checked: a broker being replaced still holds it.
func (ep Endpoint) Check() error {
	if err := CheckInterface(ep.Interface); err != nil {
		return fmt.Errorf("endpoint %s: %w", ep, err)
	}
	if ep.Device != "" {
		if err := checkDevice(ep.Device); err != nil {
			return fmt.Errorf("endpoint %s: %w", ep, err)
		}
	}
	if ep.Class == "tls" {
		if _, err := tls.LoadX509KeyPair(ep.Cert, ep.Key); err != nil {
			return fmt.Errorf("endpoint %s: loading cert=%s and key=%s: %w", ep, ep.Cert, ep.Key, err)
		}
	}
	return nil
}

// CheckInterface reports whether host (an address or name; empty means
// every interface) is one this host could bind.
func CheckInterface(host string) error {
	if host == "" {
		return nil
	}
	ips := []net.IP{net.ParseIP(host)}
	if ips[0] == nil {
		var err error
		if ips, err = net.LookupIP(host); err != nil {
			return fmt.Errorf("interface %s: %w", host, err)
		}
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return fmt.Errorf("listing this host's addresses: %w", err)
	}
	for _, ip := range ips {
		if ip.IsUnspecified() {
			return nil
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
				return nil
			}
		}
	}
	return fmt.Errorf("interface %s is not an address of this host", host)
}

// Listener is a bound endpoint.
type Listener struct {
	net.Listener
	Endpoint Endpoint
	certs    *certReloader
}

// Close stops the listener and its certificate watch.
func (l *Listener) Close() error {
	if l.certs != nil {
		l.certs.close()
	}
	return l.Listener.Close()
}

// Reload re-reads the endpoint's certificate and key now (as on SIGHUP);
// a pair that does not load keeps the previous one and is the error.
// It does nothing for tcp endpoints.
func (l *Listener) Reload() error {
	if l.certs == nil {
		return nil
	}
	_, err := l.certs.load()
	return err
}

// Listen binds ep. For tls it loads the certificate and watches its files so
// new handshakes get a renewed certificate without a restart.
func Listen(ctx context.Context, ep Endpoint, log *slog.Logger) (*Listener, error) {
	if log == nil {
		log = slog.Default()
	}
	var certs *certReloader
	if ep.Class == "tls" {
		var err error
		if certs, err = newCertReloader(ep.Cert, ep.Key, log); err != nil {
			return nil, fmt.Errorf("endpoint %s: %w", ep, err)
		}
	}
	lc := net.ListenConfig{}
	if ep.Device != "" {
		lc.Control = bindToDevice(ep.Device)
	}
	l, err := lc.Listen(ctx, "tcp", ep.Addr())
	if err != nil {
		if certs != nil {
			certs.close()
		}
		return nil, fmt.Errorf("endpoint %s: %w", ep, err)
	}
	if certs != nil {
		l = tls.NewListener(l, &tls.Config{
			MinVersion:     tls.VersionTLS12,
			GetCertificate: certs.get,
		})
	}
	return &Listener{Listener: l, Endpoint: ep, certs: certs}, nil
}
