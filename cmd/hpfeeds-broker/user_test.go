package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hpfeeds-go/hpfeeds/auth/storetest"
)

// user runs `hpfeeds-broker user …` in-process.
func user(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newRootCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(append([]string{"user"}, args...))
	err := cmd.Execute()
	return out.String(), err
}

func TestUserCommands(t *testing.T) {
	dir := t.TempDir()
	jsonPath := filepath.Join(dir, "users.json")
	os.WriteFile(jsonPath, []byte("{}"), 0o600)
	for _, spec := range []string{filepath.Join(dir, "users.db"), "database+sqlite:///" + filepath.Join(dir, "db.sqlite"), jsonPath, "mongodb"} {
		t.Run(filepath.Base(spec), func(t *testing.T) {
			if spec == "mongodb" {
				spec, _ = storetest.MongoURI(t)
			}
			if strings.HasPrefix(spec, "database+") {
				// database+ stores do not create their table.
				if out, err := user(t, "add", "--auth="+spec, "--ident=x"); err == nil {
					t.Fatalf("add without a table succeeded: %s", out)
				}
				if err := os.WriteFile(filepath.Join(dir, "ddl.sql"), []byte("CREATE TABLE auth_keys (id INTEGER PRIMARY KEY, identifier varchar(36), secret varchar(36), publish json, subscribe json);"), 0o600); err != nil {
					t.Fatal(err)
				}
				if out, err := execSQLite(filepath.Join(dir, "db.sqlite"), filepath.Join(dir, "ddl.sql")); err != nil {
					t.Fatalf("%v: %s", err, out)
				}
			}
			out, err := user(t, "add", "--auth="+spec, "--ident=sensor1", "--pubchans=a, b", "--subchans=c")
			if err != nil {
				t.Fatal(err, out)
			}
			secret := ""
			for _, l := range strings.Split(out, "\n") {
				if s, ok := strings.CutPrefix(l, "secret: "); ok {
					secret = s
				}
			}
			if len(secret) < 20 {
				t.Fatalf("no generated secret in %q", out)
			}
			out, err = user(t, "add", "--auth="+spec, "--ident=sensor2", "--secret=given", "--owner=alice")
			if err != nil || strings.Contains(out, "given") {
				t.Fatalf("add with a secret printed it or failed: %v %q", err, out)
			}
			// auth_keys has no owner column: the owner is the identifier.
			owner := "alice"
			if strings.HasPrefix(spec, "database+") {
				owner = "sensor2"
			}
			out, err = user(t, "list", "--auth="+spec)
			if err != nil || !strings.Contains(out, "sensor1") || !strings.Contains(out, "a,b") || !strings.Contains(out, owner) {
				t.Fatalf("list: %v\n%s", err, out)
			}
			if strings.Contains(out, secret) || strings.Contains(out, "given") {
				t.Fatalf("list prints secrets:\n%s", out)
			}
			out, err = user(t, "show", "--auth="+spec, "--ident=sensor2")
			if err != nil || !strings.Contains(out, "owner:    "+owner) || strings.Contains(out, "given") {
				t.Fatalf("show: %v\n%s", err, out)
			}
			if _, err := user(t, "remove", "--auth="+spec, "--ident=sensor1"); err != nil {
				t.Fatal(err)
			}
			if _, err := user(t, "show", "--auth="+spec, "--ident=sensor1"); err == nil {
				t.Fatal("removed user still shown")
			}
			if _, err := user(t, "remove", "--auth="+spec, "--ident=sensor1"); err == nil {
				t.Fatal("removing a missing user succeeded")
			}
		})
	}
	if _, err := user(t, "add", "--auth=env", "--ident=x"); err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Fatalf("env: %v", err)
	}
	if _, err := user(t, "add", "--auth="+jsonPath); err == nil || !strings.Contains(err.Error(), "--ident") {
		t.Fatalf("missing ident: %v", err)
	}
}

func execSQLite(db, script string) ([]byte, error) {
	return exec.Command("sqlite3", db, ".read "+script).CombinedOutput()
}
