package broker

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"

	"github.com/hpfeeds-go/hpfeeds/internal/watch"
)

// certReloader serves a certificate and swaps in a new one when its files
// change, as Let's Encrypt renewals do. A broken new pair keeps the old one.
type certReloader struct {
	certFile, keyFile string
	log               *slog.Logger
	cert              atomic.Pointer[tls.Certificate]
	stop              func()

	mu       sync.Mutex
	lastCert []byte
	lastKey  []byte
}

func newCertReloader(certFile, keyFile string, log *slog.Logger) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile, log: log}
	if _, err := r.load(); err != nil {
		return nil, err
	}
	stop, err := watch.Files(log, []string{certFile, keyFile}, r.reload)
	if err != nil {
		log.Warn("cannot watch certificate files; renewals need a restart or SIGHUP", "cert", certFile, "err", err)
		stop = func() {}
	}
	r.stop = stop
	return r, nil
}

// load reads the pair and swaps it in if it changed and is usable. It
// logs nothing: its callers say what a change means.
func (r *certReloader) load() (changed bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	certPEM, err := os.ReadFile(r.certFile)
	if err != nil {
		return false, fmt.Errorf("reading certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(r.keyFile)
	if err != nil {
		return false, fmt.Errorf("reading private key: %w", err)
	}
	if bytes.Equal(certPEM, r.lastCert) && bytes.Equal(keyPEM, r.lastKey) {
		return false, nil
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return false, fmt.Errorf("loading %s and %s: %w", r.certFile, r.keyFile, err)
	}
	r.cert.Store(&cert)
	r.lastCert, r.lastKey = certPEM, keyPEM
	return true, nil
}

func (r *certReloader) reload() {
	changed, err := r.load()
	switch {
	case err != nil:
		r.log.Error("new TLS certificate not usable; keeping the previous one", "err", err)
	case changed:
		r.log.Info("TLS certificate reloaded", "cert", r.certFile, "key", r.keyFile)
	}
}

func (r *certReloader) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.cert.Load(), nil
}

func (r *certReloader) close() { r.stop() }
