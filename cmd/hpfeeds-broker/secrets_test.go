package main

import (
	"encoding/base64"
	"encoding/hex"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hpfeeds-go/hpfeeds/auth/storetest"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

// Nothing the broker logs at debug level or exports as a metric holds a
// user's secret, a login's hash, or a store's password, through good and
// failed logins, a permission error, and stores that are down or broken.
func TestNoSecretInLogsOrMetrics(t *testing.T) {
	storetest.RequireService(t, storetest.PostgreSQL.Addr, storetest.PostgreSQL.How)
	const (
		userSecret = "Sekr1t-user-7f3a"
		pgPassword = "Pa55-pg-91c2"
		myPassword = "Pa55-my-4d8e"
		mgPassword = "Pa55-mongo-b6e0"
	)
	dir := t.TempDir()
	users := filepath.Join(dir, "users.json")
	if err := os.WriteFile(users, []byte(`{"sensor": {"secret": "`+userSecret+`", "pubchans": ["events"], "subchans": ["events"]}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := closed.Addr().String()
	closed.Close()
	p := startBroker(t, true, "--debug", "-e", "tcp:interface=127.0.0.1:port=0", "--exporter=127.0.0.1:0", "--lookup-timeout=2s",
		"--auth="+users,
		// PostgreSQL trusts local users whatever their password; "test"
		// has no auth_keys table, so lookups reach it and fail.
		"--auth=database+postgresql://postgres:"+pgPassword+"@"+storetest.PostgreSQL.Addr+"/test",
		"--auth=database+mysql://root:"+myPassword+"@"+down+"/test",
		"--auth=mongodb://hp:"+mgPassword+"@"+down+"/hpfeeds?serverSelectionTimeoutMS=500")

	login := func(ident, secret string, frames ...[]byte) (hash []byte, reply wire.Frame) {
		t.Helper()
		c := brokertest.Dial(t, p.addr)
		defer c.Conn.Close()
		h := wire.Hash(c.Nonce, []byte(secret))
		c.Send(append([][]byte{c.Auth(ident, secret)}, frames...)...)
		f := c.ReadFrame()
		return h[:], wire.Frame{Op: f.Op, Payload: append([]byte(nil), f.Payload...)}
	}
	sub, _ := wire.AppendSubscribe(nil, []byte("sensor"), []byte("events"))
	pub, _ := wire.AppendPublish(nil, []byte("sensor"), []byte("events"), []byte("hello"))
	forbidden, _ := wire.AppendPublish(nil, []byte("sensor"), []byte("admin"), []byte("x"))

	var hashes [][]byte
	h, f := login("sensor", userSecret, sub, pub)
	if f.Op != wire.OpPublish || string(f.Payload) != "hello" {
		t.Fatalf("good login: %v %q", f.Op, f.Payload)
	}
	hashes = append(hashes, h)
	h, f = login("sensor", userSecret, forbidden)
	if want := "Authkey not allowed to pub here. ident=sensor, chan=admin"; string(f.Payload) != want {
		t.Fatalf("forbidden publish: %q", f.Payload)
	}
	hashes = append(hashes, h)
	h, f = login("sensor", "wrong-"+userSecret)
	if string(f.Payload) != "Authentication failed for sensor" {
		t.Fatalf("wrong secret: %q", f.Payload)
	}
	hashes = append(hashes, h)
	// Unknown to the JSON file: every store behind it is asked and fails.
	h, f = login("ghost", userSecret)
	if string(f.Payload) != "Authentication failed for ghost" {
		t.Fatalf("store errors: %q", f.Payload)
	}
	hashes = append(hashes, h)

	_, metrics := get(t, "http://"+p.exporter+"/metrics")
	log := p.stopAndLog()
	// The log is there and says what happened, with passwords masked.
	// Stores down at start-up are logged, not fatal: the broker served.
	for _, want := range []string{"credential store unreachable at start-up", "credential lookup failed", "ident=ghost", "auth_keys", "xxxxx"} {
		if !strings.Contains(log, want) {
			t.Errorf("the log lacks %q:\n%s", want, log)
		}
	}
	if !strings.Contains(metrics, `hpfeeds_broker_connection_ready_total{ident="sensor"}`) {
		t.Errorf("metrics lack the sensor's series:\n%s", metrics)
	}
	secrets := []string{userSecret, pgPassword, myPassword, mgPassword}
	for _, h := range hashes {
		secrets = append(secrets, hex.EncodeToString(h), strings.ToUpper(hex.EncodeToString(h)),
			base64.StdEncoding.EncodeToString(h), string(h))
	}
	for _, s := range secrets {
		if strings.Contains(log, s) {
			t.Errorf("the log holds the secret %q:\n%s", s, log)
		}
		if strings.Contains(metrics, s) {
			t.Errorf("/metrics holds the secret %q", s)
		}
	}
}
