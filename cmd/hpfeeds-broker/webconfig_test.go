package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// --web-config-file mistakes stop the broker at start-up with one line;
// a good file serves the exporter as it says (metrics.TestExporterWebConfig
// checks TLS and basic authentication themselves).
func TestWebConfigFile(t *testing.T) {
	dir := t.TempDir()
	broken := filepath.Join(dir, "broken.yml")
	os.WriteFile(broken, []byte("tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: /nonexistent.key\n"), 0o600)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--web-config-file", broken}, "--web-config-file applies to --exporter"},
		{[]string{"--web-config-file", broken, "--exporter", "127.0.0.1:0"}, "/nonexistent.crt"},
		{[]string{"--web-config-file", broken, "--exporter", "127.0.0.1:0", "--check-config"}, "/nonexistent.crt"},
	} {
		code, out := run(t, nil, append(c.args, "--auth=env", "-e", "tcp:interface=127.0.0.1:port=0")...)
		if code == 0 || !strings.Contains(out, c.want) || strings.Count(strings.TrimSpace(out), "\n") > 0 {
			t.Errorf("%v: exit %d, want one line with %q:\n%s", c.args, code, c.want, out)
		}
	}
	users := filepath.Join(dir, "users.yml")
	os.WriteFile(users, []byte("basic_auth_users:\n  prometheus: $2y$10$Ozx3AtFVP6dzfWqG9/GWWOYrRZjw.ihnMdbHe/7ODHbPgKYn2gOmu\n"), 0o600)
	p := startBroker(t, true, "--auth=env", "-e", "tcp:interface=127.0.0.1:port=0", "--exporter", "127.0.0.1:0", "--web-config-file", users)
	if resp, _ := get(t, "http://"+p.exporter+"/metrics"); resp.StatusCode != 401 {
		t.Errorf("GET /metrics without credentials: %s, want 401", resp.Status)
	}
}
