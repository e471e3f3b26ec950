package client_test

import (
	"crypto/x509"
	"testing"

	"github.com/hpfeeds-go/hpfeeds/internal/testcert"
)

// testCerts makes a CA and a certificate for localhost signed by it.
func testCerts(t *testing.T) (*x509.CertPool, string, string) {
	ca := testcert.NewCA(t)
	_, certFile, keyFile := ca.WriteFiles(t, t.TempDir(), "broker", "localhost")
	return ca.Pool, certFile, keyFile
}
