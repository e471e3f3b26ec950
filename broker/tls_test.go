package broker_test

import (
	"crypto/tls"
	"github.com/hpfeeds-go/hpfeeds/internal/testcert"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
)

// testCA issues certificates for 127.0.0.1.
func writeAtomic(t *testing.T, path string, data []byte) {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// dialTLS connects, authenticates and returns the client and the serial of
// the certificate the broker presented.
func dialTLS(t *testing.T, addr string, ca *testcert.CA) (*brokertest.Client, int64) {
	t.Helper()
	tc, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: ca.Pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	c := brokertest.Handshake(t, tc)
	c.Send(c.Auth("both", "bothsecret"))
	return c, tc.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
}

// startTLS serves a broker on a TLS endpoint whose certificate, issued by
// ca with serial, is in the returned files.
func startTLS(t *testing.T, ca *testcert.CA, serial int64) (srv *brokertest.Server, certFile, keyFile string) {
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "broker.crt"), filepath.Join(dir, "broker.key")
	c, k := ca.Issue(t, serial, "127.0.0.1")
	writeAtomic(t, certFile, c)
	writeAtomic(t, keyFile, k)
	srv = brokertest.StartEndpoint(t, testUsers(), "tls:interface=127.0.0.1:port=0:cert="+certFile+":key="+keyFile)
	return srv, certFile, keyFile
}

func TestTLSAndCertificateRollover(t *testing.T) {
	ca := testcert.NewCA(t)
	srv, certFile, keyFile := startTLS(t, ca, 100)
	old, serial := dialTLS(t, srv.Addr, ca)
	if serial != 100 {
		t.Fatalf("serial %d", serial)
	}
	old.Send(brokertest.Subscribe(t, "both", "chan"))
	old.Sync("both")

	// A renewal: new key first, then the certificate, each atomically. In
	// between the pair does not match and the old one must stay.
	c2, k2 := ca.Issue(t, 200, "127.0.0.1")
	writeAtomic(t, keyFile, k2)
	writeAtomic(t, certFile, c2)
	brokertest.Eventually(t, "new certificate served", func() bool {
		c, s := dialTLS(t, srv.Addr, ca)
		c.Conn.Close()
		return s == 200
	})
	// The connection made before the renewal still works.
	fresh, _ := dialTLS(t, srv.Addr, ca)
	fresh.Send(brokertest.Publish(t, "both", "chan", "after renewal"))
	old.ExpectMessage("both", "chan", "after renewal")

	// A broken new pair keeps the last good one.
	writeAtomic(t, certFile, []byte("not a certificate"))
	time.Sleep(300 * time.Millisecond)
	if _, s := dialTLS(t, srv.Addr, ca); s != 200 {
		t.Fatalf("serial %d after a broken certificate; want the previous 200", s)
	}
}

// certbot's layout: live/broker.crt is a symlink into archive/, and a
// renewal repoints the symlink.
func TestTLSCertificateSymlinkSwap(t *testing.T) {
	ca := testcert.NewCA(t)
	dir := t.TempDir()
	c1, k1 := ca.Issue(t, 1, "127.0.0.1")
	c2, k2 := ca.Issue(t, 2, "127.0.0.1")
	for name, data := range map[string][]byte{"cert1.pem": c1, "key1.pem": k1, "cert2.pem": c2, "key2.pem": k2} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	live := filepath.Join(dir, "live")
	os.Mkdir(live, 0o755)
	link := func(target, name string) {
		tmp := filepath.Join(live, name+".new")
		if err := os.Symlink(filepath.Join(dir, target), tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(live, name)); err != nil {
			t.Fatal(err)
		}
	}
	link("cert1.pem", "fullchain.pem")
	link("key1.pem", "privkey.pem")
	srv := brokertest.StartEndpoint(t, testUsers(), "tls:interface=127.0.0.1:port=0:cert="+
		filepath.Join(live, "fullchain.pem")+":key="+filepath.Join(live, "privkey.pem"))
	if _, s := dialTLS(t, srv.Addr, ca); s != 1 {
		t.Fatalf("serial %d", s)
	}
	link("key2.pem", "privkey.pem")
	link("cert2.pem", "fullchain.pem")
	brokertest.Eventually(t, "swapped certificate served", func() bool {
		c, s := dialTLS(t, srv.Addr, ca)
		c.Conn.Close()
		return s == 2
	})
}

func TestTLSRefusesMissingCertificate(t *testing.T) {
	dir := t.TempDir()
	_, err := listenSpec("tls:interface=127.0.0.1:port=0:cert=" + filepath.Join(dir, "none.crt") + ":key=" + filepath.Join(dir, "none.key"))
	if err == nil {
		t.Fatal("tls endpoint without certificate files accepted")
	}
}

// Certificates renewed five times while clients keep connecting and a
// subscriber keeps receiving: no handshake fails (each sees the old or the
// new certificate, never a mismatched pair) and no message is lost.
func TestTLSRotationUnderLoad(t *testing.T) {
	ca := testcert.NewCA(t)
	srv, certFile, keyFile := startTLS(t, ca, 1)

	s, _ := dialTLS(t, srv.Addr, ca)
	s.Send(brokertest.Subscribe(t, "both", "chan"))
	s.Sync("both")
	p, _ := dialTLS(t, srv.Addr, ca)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var handshakes, failures atomic.Int64
	var lastSerial atomic.Int64
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				tc, err := tls.Dial("tcp", srv.Addr, &tls.Config{RootCAs: ca.Pool, ServerName: "127.0.0.1"})
				if err != nil {
					failures.Add(1)
					t.Errorf("handshake during rotation: %v", err)
					continue
				}
				handshakes.Add(1)
				lastSerial.Store(tc.ConnectionState().PeerCertificates[0].SerialNumber.Int64())
				tc.Close()
			}
		}()
	}
	const perRound = 200
	for round := int64(2); round <= 6; round++ {
		c, k := ca.Issue(t, round, "127.0.0.1")
		writeAtomic(t, keyFile, k)
		for i := 0; i < perRound/2; i++ {
			p.Send(brokertest.Publish(t, "both", "chan", "m"))
		}
		writeAtomic(t, certFile, c)
		for i := 0; i < perRound/2; i++ {
			p.Send(brokertest.Publish(t, "both", "chan", "m"))
		}
		for i := 0; i < perRound; i++ {
			s.ExpectMessage("both", "chan", "m")
		}
		brokertest.Eventually(t, "the new certificate", func() bool { return lastSerial.Load() == round })
	}
	close(stop)
	wg.Wait()
	t.Logf("%d handshakes across 5 renewals, %d failed", handshakes.Load(), failures.Load())
}
