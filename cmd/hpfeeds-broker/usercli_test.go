package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/auth/storetest"
)

// runIn runs the binary in dir with stdin and returns its exit code and
// output.
func runIn(t *testing.T, dir, stdin string, env []string, args ...string) (int, string) {
	t.Helper()
	// A command that should have exited and serves instead fails its test
	// (killed: exit -1) rather than hanging the run.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Dir, cmd.Stdin = dir, strings.NewReader(stdin)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, string(out)
}

// must runs the binary in dir and fails the test unless it exits 0 with
// output containing want.
func must(t *testing.T, dir, stdin, want string, args ...string) string {
	t.Helper()
	code, out := runIn(t, dir, stdin, nil, args...)
	if code != 0 || !strings.Contains(out, want) {
		t.Fatalf("%v: exit %d, want %q in:\n%s", args, code, want, out)
	}
	return out
}

// mustFail runs the binary in dir and fails the test unless it exits
// non-zero with one line containing want.
func mustFail(t *testing.T, dir, want string, args ...string) {
	t.Helper()
	code, out := runIn(t, dir, "", nil, args...)
	if code == 0 || strings.Count(out, "\n") != 1 || !strings.Contains(out, want) {
		t.Fatalf("%v: exit %d, want one line with %q:\n%s", args, code, want, out)
	}
}

// The broker creates the default SQLite store, and a .db path's in a
// directory that exists, at start, as the Python broker did, and says so
// once with the absolute path; --check-config and `user list` create
// nothing (the first says the broker would), and neither does a
// database+sqlite URL or a path whose directory is missing.
func TestSQLiteCreatedAtStart(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "sqlite.db")
	must(t, dir, "", `warning: msg="SQLite database missing or empty: the broker creates it with its authkeys table at start" path=`+db, "--check-config")
	mustFail(t, dir, "no SQLite database at "+db, "user", "list")
	mustFail(t, dir, "no SQLite database at "+filepath.Join(dir, "new.db"), "--check-config", "--auth=database+sqlite:///new.db")
	mustFail(t, dir, "user init --auth=database+sqlite:///"+filepath.Join(dir, "new.db"), "user", "add", "--auth=database+sqlite:///new.db", "--ident=x")
	mustFail(t, dir, "no SQLite database at "+filepath.Join(dir, "nodir", "x.db"), "-e", "tcp:interface=127.0.0.1:port=0", "--auth=nodir/x.db")
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("left behind: %v", entries)
	}
	for _, file := range []string{db, filepath.Join(dir, "other.sqlite")} {
		args := []string{"-e", "tcp:interface=127.0.0.1:port=0"}
		if file != db {
			args = append(args, "--auth=other.sqlite")
		}
		created := `level=INFO msg="created empty credential store" path=` + file + "\n"
		for start := range 2 { // the second start finds it
			cmd := exec.Command(binary, args...)
			cmd.Dir = dir
			log := startProcess(t, cmd, false).stopAndLog()
			if n := strings.Count(log, created); n != 1-start {
				t.Errorf("start %d: %d lines %q:\n%s", start+1, n, created, log)
			}
			if !strings.Contains(log, `level=WARN msg="credential store has no users`) {
				t.Errorf("start %d: no warning of the empty store:\n%s", start+1, log)
			}
		}
		if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v, want mode 0600", file, fi, err)
		}
	}
	// The table is the Python broker's: its documented INSERT works.
	sqlite3(t, dir, "sqlite.db", pythonDocsInsert)
	must(t, dir, "", "ident", "user", "show", "--ident=ident")
	must(t, dir, "", "", "user", "remove", "--ident=ident")
	must(t, dir, "", "user s1 added to sqlite:"+db, "user", "add", "--ident=s1", "--pubchans=a")
	must(t, dir, "", "configuration OK", "--check-config") // no longer empty: no warning
	if code, out := runIn(t, dir, "", nil, "--check-config"); code != 0 || strings.Contains(out, "warning") {
		t.Errorf("--check-config on a store with a user: exit %d: %s", code, out)
	}
	must(t, dir, "", "users in sqlite:"+db, "user", "list")
	must(t, dir, "", "store:    sqlite:"+db, "user", "show", "--ident=s1")
	must(t, dir, "", "sqlite:"+db+" already has its users table", "user", "init")
	must(t, dir, "", "configuration OK: 1 endpoint(s), credential stores: sqlite:"+db, "--check-config")
	p := startBroker(t, false, "--auth="+db, "-e", "tcp:interface=127.0.0.1:port=0")
	if log := p.stopAndLog(); !strings.Contains(log, "msg=starting name=hpfeeds credential_stores=sqlite:"+db) {
		t.Errorf("start-up line lacks the store's path:\n%s", log)
	}
	must(t, dir, "", "user s1 removed from sqlite:"+db, "user", "remove", "--ident=s1")
	// database+sqlite: user init makes the documented table, and the
	// broker then checks it.
	must(t, dir, "", "created the users table of database+sqlite:///"+filepath.Join(dir, "new.db"), "user", "init", "--auth=database+sqlite:///new.db")
	must(t, dir, "", "configuration OK", "--check-config", "--auth=database+sqlite:///new.db")
}

// `user add` refuses an ident the store holds instead of replacing it
// (the running sensor would be locked out); `user update` changes only
// what it is given, the secret only with --secret, which - reads from
// standard input; channel lists may be JSON lists.
func TestUserAddRefusesUpdateKeeps(t *testing.T) {
	dir := t.TempDir()
	users := filepath.Join(dir, "users.json")
	must(t, dir, "", "created the empty user file "+users, "user", "init", "--auth=users.json")
	auth := "--auth=" + users
	must(t, dir, "", "added", "user", "add", auth, "--ident=s1", "--secret=first", "--pubchans=a,b", "--subchans=c")
	mustFail(t, dir, "user s1 already exists in json:"+users, "user", "add", auth, "--ident=s1", "--pubchans=x")
	must(t, dir, "", "user s1 updated in json:"+users+": pubchans", "user", "update", auth, "--ident=s1", "--pubchans", `["x", "y"]`)
	must(t, dir, "second\n", "updated", "user", "update", auth, "--ident=s1", "--secret=-")
	mustFail(t, dir, "nothing to change", "user", "update", auth, "--ident=s1")
	mustFail(t, dir, `no user "s2"`, "user", "update", auth, "--ident=s2", "--secret=x")
	mustFail(t, dir, "not a JSON list", "user", "add", auth, "--ident=s3", "--pubchans", `["a"`)
	mustFail(t, dir, "bracket or quote", "user", "add", auth, "--ident=s3", "--pubchans", `"a"`)
	data, _ := os.ReadFile(users)
	var got map[string]struct {
		Secret             string
		PubChans, SubChans []string
	}
	json.Unmarshal(data, &got)
	s1 := got["s1"]
	if s1.Secret != "second" || strings.Join(s1.PubChans, ",") != "x,y" || strings.Join(s1.SubChans, ",") != "c" || len(got) != 1 {
		t.Fatalf("users after the updates: %s", data)
	}
}

// On MariaDB's default collation "Alice" and "alice" are one identifier:
// `user add` refuses the second (the table of the Python broker's docs
// has no key to do it), and update and remove insist on the spelling.
func TestUserAddRefusesCollationTwin(t *testing.T) {
	srv := storetest.MariaDB
	db := srv.NewDatabase(t)
	srv.Exec(t, db, srv.LegacyDDL)
	srv.Exec(t, db, `INSERT INTO auth_keys (identifier, secret) VALUES ('Alice', 'x')`)
	auth := "--auth=" + srv.URL(db)
	dir := t.TempDir()
	mustFail(t, dir, `user "alice" not added to `+srv.URL(db)+`: it holds "Alice"`, "user", "add", auth, "--ident=alice")
	mustFail(t, dir, `no user "alice"`, "user", "update", auth, "--ident=alice", "--secret=y")
	mustFail(t, dir, `but "Alice"`, "user", "remove", auth, "--ident=alice")
	must(t, dir, "", "users in", "user", "list", auth)

	// Both spellings in the table (it has no key): changing or removing
	// one leaves the other as it was.
	srv.Exec(t, db, `INSERT INTO auth_keys (identifier, secret) VALUES ('alice', 'y')`)
	must(t, dir, "", "", "user", "update", auth, "--ident=alice", "--subchans=x")
	must(t, dir, "", "", "user", "remove", auth, "--ident=alice")
	if out := must(t, dir, "", "", "user", "show", auth, "--ident=Alice"); !strings.Contains(out, "Alice") {
		t.Fatalf("Alice is gone after alice was updated and removed:\n%s", out)
	}
}

// A SQLite database without the table is another program's: it is
// refused, with a hint naming a command that works. An empty file (touch)
// is created at start as a missing one is.
func TestInitHintForSQLiteFile(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "other.db")
	sqlite3(t, dir, "other.db", "CREATE TABLE other (x);")
	mustFail(t, dir, "`hpfeeds-broker user init --auth="+db+"`", "--check-config", "--auth=other.db")
	mustFail(t, dir, "`hpfeeds-broker user init --auth="+db+"`", "-e", "tcp:interface=127.0.0.1:port=0", "--auth=other.db")
	must(t, dir, "", "", "user", "init", "--auth="+db)
	must(t, dir, "", "configuration OK", "--check-config", "--auth=other.db")

	empty := filepath.Join(dir, "empty.db")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	must(t, dir, "", "SQLite database missing or empty", "--check-config", "--auth=empty.db")
	cmd := exec.Command(binary, "-e", "tcp:interface=127.0.0.1:port=0", "--auth=empty.db")
	cmd.Dir = dir
	if log := startProcess(t, cmd, false).stopAndLog(); !strings.Contains(log, `msg="created empty credential store" path=`+empty) {
		t.Fatalf("an empty file is not made a store:\n%s", log)
	}
}

// Listing writes nothing, so env lists; --json is for scripts and never
// holds a secret.
func TestUserListEnvJSON(t *testing.T) {
	env := []string{"HPFEEDS_SENSOR_ONE_SECRET=hidden", "HPFEEDS_SENSOR_ONE_PUBCHANS=a,b", "HPFEEDS_LOGGER_SECRET=hidden", "HPFEEDS_LOGGER_SUBCHANS=a"}
	code, out := runIn(t, t.TempDir(), "", env, "user", "list", "--auth=env", "--json")
	var got struct {
		Store string
		Users []struct {
			Ident, Owner       string
			PubChans, SubChans []string
		}
	}
	if err := json.Unmarshal([]byte(out), &got); code != 0 || err != nil || strings.Contains(out, "hidden") {
		t.Fatalf("exit %d, %v:\n%s", code, err, out)
	}
	var idents []string
	for _, u := range got.Users {
		idents = append(idents, u.Ident)
	}
	if got.Store != "env" || strings.Join(idents, " ") != "logger sensor_one" || strings.Join(got.Users[1].PubChans, ",") != "a,b" {
		t.Fatalf("got %+v", got)
	}
}

// Mistakes name what is wrong: a mistyped user command, --auth=json.
func TestUserCommandMistakes(t *testing.T) {
	dir := t.TempDir()
	mustFail(t, dir, `unknown user command "ad" (use add, update, list, show, remove or init); did you mean add?`, "user", "ad", "--ident=x")
	mustFail(t, dir, "give the JSON user file's path", "--check-config", "--auth=json")
	if out := must(t, dir, "", "", "--help"); !regexp.MustCompile(`--max-publish-size BYTES .*\(default 1048576\)`).MatchString(out) {
		t.Errorf("--help does not show the 1 MiB default:\n%s", out)
	}
}

// --check-config checks that the table (or collection) the broker reads
// exists, with its columns, and creates nothing.
func TestCheckConfigChecksTable(t *testing.T) {
	for _, srv := range storetest.SQLServers {
		db := srv.NewDatabase(t)
		mustFail(t, t.TempDir(), "auth_keys", "--check-config", "--auth="+srv.URL(db))
		srv.Exec(t, db, "CREATE TABLE auth_keys (id int, identifier varchar(36), secret varchar(36))")
		mustFail(t, t.TempDir(), "publish", "--check-config", "--auth="+srv.URL(db))
		srv.Exec(t, db, "DROP TABLE auth_keys")
		srv.Exec(t, db, srv.DDL)
		must(t, t.TempDir(), "", "configuration OK", "--check-config", "--auth="+srv.URL(db))
	}
	uri, _ := storetest.MongoURI(t)
	mustFail(t, t.TempDir(), "no collection auth_key", "--check-config", "--auth="+uri)
	must(t, t.TempDir(), "", "created the users table", "user", "init", "--auth="+uri)
	must(t, t.TempDir(), "", "configuration OK", "--check-config", "--auth="+uri)
}

// pythonDocsInsert adds a user as the Python broker's docs/broker.rst
// ("SQLite authentication store") writes it.
const pythonDocsInsert = `INSERT INTO authkeys (owner, ident, secret, pubchans, subchans)
    VALUES ('owner', 'ident', 'secret', '["chan1"]', '["chan1"]');
`

// sqlite3 runs the sqlite3 shell on file in dir with sql on its standard
// input, through argv0 (e.g. the image's entrypoint) when given.
func sqlite3(t *testing.T, dir, file, sql string, argv0 ...string) {
	t.Helper()
	argv := append(argv0, "sqlite3", file)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir, cmd.Stdin = dir, strings.NewReader(sql)
	if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
		t.Fatalf("%v: %v\n%s", argv, err, out)
	}
}
