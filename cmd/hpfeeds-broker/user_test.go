package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/auth/storetest"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
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
	for _, spec := range []string{filepath.Join(dir, "users.db"), "database+sqlite:///" + filepath.Join(dir, "db.sqlite"), jsonPath,
		"mongodb", storetest.PostgreSQL.Name, storetest.MariaDB.Name} {
		t.Run(filepath.Base(spec), func(t *testing.T) {
			switch spec {
			case "mongodb":
				spec, _ = storetest.MongoURI(t)
			case storetest.PostgreSQL.Name:
				spec, _ = storetest.PostgreSQL.NewUserTable(t)
			case storetest.MariaDB.Name:
				spec, _ = storetest.MariaDB.NewUserTable(t)
			}
			if strings.HasPrefix(spec, "database+sqlite") {
				// database+ stores do not create their table at add; the
				// command says how (main adds the hint).
				if out, err := user(t, "add", "--auth="+spec, "--ident=x"); err == nil || !strings.Contains(withInitHint(err).Error(), "user init") {
					t.Fatalf("add without a table: %v %s", err, out)
				}
			}
			if !strings.HasSuffix(spec, ".json") && !strings.HasPrefix(spec, "mongodb") {
				if out, err := user(t, "init", "--auth="+spec); err != nil {
					t.Fatalf("init: %v: %s", err, out)
				}
			}
			// A broker running on the same store sees each change at the
			// next login.
			st, err := auth.Open(context.Background(), spec, auth.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			srv := brokertest.Start(t, st)

			out, err := user(t, "add", "--auth="+spec, "--ident=sensor1", "--pubchans=a, b", "--subchans=a")
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
			brokertest.Eventually(t, "the added user logging in", func() error { return storetest.TryLogin(srv.Addr, "sensor1", secret, "a") })
			// auth_keys has no owner column: the owner is the identifier,
			// and --owner is refused rather than ignored.
			owner, ownerFlag := "alice", "--owner=alice"
			if strings.HasPrefix(spec, "database+") {
				if out, err := user(t, "add", "--auth="+spec, "--ident=sensor2", "--secret=given", "--owner=alice"); err == nil ||
					!strings.Contains(err.Error(), "no owner column") {
					t.Fatalf("--owner on auth_keys: %v %s", err, out)
				}
				owner, ownerFlag = "sensor2", "--owner="
			}
			out, err = user(t, "add", "--auth="+spec, "--ident=sensor2", "--secret=given", ownerFlag)
			if err != nil || strings.Contains(out, "given") {
				t.Fatalf("add with a secret printed it or failed: %v %q", err, out)
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
			brokertest.Eventually(t, "the removed user refused", func() error {
				if err := storetest.TryLogin(srv.Addr, "sensor1", secret, "a"); err == nil || err.Error() != "Authentication failed for sensor1" {
					return fmt.Errorf("login: %v", err)
				}
				return nil
			})
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
	if _, err := user(t, "add", "--auth="+jsonPath); err == nil || !strings.Contains(err.Error(), `"ident"`) {
		t.Fatalf("missing ident: %v", err)
	}
}
