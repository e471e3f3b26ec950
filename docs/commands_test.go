// Package docs holds the documentation and the test that runs its commands.
package docs

import (
	"context"
	"fmt"
	"github.com/hpfeeds-go/hpfeeds/internal/testcert"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/auth"
	"github.com/hpfeeds-go/hpfeeds/auth/storetest"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
	"github.com/hpfeeds-go/hpfeeds/metrics"
	"github.com/hpfeeds-go/hpfeeds/status"
)

// A block is one fenced block of a document that the test must run, or that
// says why it is not run: a line `<!-- not run: REASON -->` right above it.
type block struct {
	file, lang, text, skip string
	line                   int
}

var (
	fence    = regexp.MustCompile("(?ms)^(<!-- (not run|run on): ([^>]*) -->\\n)?```(sh|bash|console|shell|sql)\\n(.*?)^```")
	runLangs = map[string]bool{"sh": true, "bash": true, "console": true, "shell": true}
)

// blocks returns the command blocks of the README and every doc, in order.
func blocks(t *testing.T) []block {
	files := []string{"../README.md", "../SECURITY.md"}
	docs, _ := filepath.Glob("*.md")
	for _, d := range docs {
		files = append(files, d)
	}
	var out []block
	for _, f := range files {
		data, err := os.ReadFile(f)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		s := string(data)
		for _, m := range fence.FindAllStringSubmatchIndex(s, -1) {
			b := block{file: f, lang: s[m[8]:m[9]], text: s[m[10]:m[11]], line: strings.Count(s[:m[0]], "\n") + 1}
			if m[2] >= 0 {
				switch s[m[4]:m[5]] {
				case "not run":
					b.skip = s[m[6]:m[7]]
				case "run on":
					b.lang += ":" + s[m[6]:m[7]]
				}
			}
			out = append(out, b)
		}
	}
	return out
}

// prelude makes the documented commands safe to run here: the broker checks
// its configuration instead of serving, clients talk to the test's broker,
// and go commands build from this checkout with one benchmark iteration.
const prelude = `
set -euo pipefail
hpfeeds-broker() {
	case "${1:-}" in
	user|status|help|--help|--version|completion) command hpfeeds-broker "$@" ;;
	*)
		local ep=()
		case " $* " in *" -e "*|*" --endpoint"*|*" --bind"*) ;; *) ep=(-e tcp:port=0) ;; esac
		command hpfeeds-broker "$@" "${ep[@]}" --check-config ;;
	esac
}
hpfeeds() {
	local port=$HPFEEDS_PORT rc=0 tries=1 name=() prev=
	# The documented --host stands for the test's broker, as if DNS said
	# so: TLS still checks the certificate for that name.
	for a in "$@"; do
		[ "$prev" = --host ] && name=(--tls-server-name "$a")
		prev=$a
	done
	case " $* " in *" --tls-server-name "*|*" --insecure-skip-verify "*) name=() ;; esac
	case " $* " in
	*" --tlscert "*|*" --tls "*|*" --tls-ca "*|*" --tls-server-name "*|*" --insecure-skip-verify "*)
		# The TLS broker serves broker.crt: a recipe that rewrites it is
		# served once the broker's file watch has reloaded it.
		port=$HPFEEDS_TLS_PORT tries=20 ;;
	*) name=() ;;
	esac
	while :; do
		rc=0
		if [ "$1" = subscribe ]; then
			# A subscriber runs until interrupted: still running is success.
			timeout 3 hpfeeds "$@" --host 127.0.0.1 -p "$port" "${name[@]}" || rc=$?
			[ $rc = 124 ] && return 0
		else
			command hpfeeds "$@" --host 127.0.0.1 -p "$port" "${name[@]}" && return 0 || rc=$?
		fi
		tries=$((tries - 1))
		[ $tries -gt 0 ] || { echo "hpfeeds $1 exited $rc" >&2; return 1; }
		sleep 0.25
	done
}
go() {
	case "$1 ${2:-}" in
	"run ./cmd/hpfeeds-broker") shift 2; hpfeeds-broker "$@" ;;
	"run ./cmd/hpfeeds") shift 2; hpfeeds "$@" ;;
	"install "*) local pkg=${2%@*}; (cd "$REPO" && command go build -o /dev/null "./${pkg#github.com/hpfeeds-go/hpfeeds/}") ;;
	"test "*) (cd "$REPO" && command go "$@" -benchtime=1x -count=1) ;;
	*) echo "go $1: not a command this test knows" >&2; return 1 ;;
	esac
}
`

func TestDocumentedCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("runs every documented command; not in -short")
	}
	repo, _ := filepath.Abs("..")
	work := t.TempDir()
	bin := filepath.Join(work, "bin")
	for _, c := range []string{"hpfeeds-broker", "hpfeeds"} {
		if out, err := exec.Command("go", "build", "-o", filepath.Join(bin, c), "../cmd/"+c).CombinedOutput(); err != nil {
			t.Fatalf("building %s: %v\n%s", c, err, out)
		}
	}
	for _, d := range []string{"etc/hpfeeds", "var/lib/hpfeeds", "app/var", "relative"} {
		os.MkdirAll(filepath.Join(work, d), 0o755)
	}
	write(t, filepath.Join(work, "etc/hpfeeds/users.json"), "{}")
	write(t, filepath.Join(work, "sample.bin"), "\x00\x01binary\xff")
	// broker.crt and broker.key for broker.example and 127.0.0.1, and the
	// CA that signed them as ca.crt.
	testcert.NewCA(t).WriteFiles(t, work, "broker", "broker.example", "127.0.0.1")
	// The default stores, as `user init` (docs/stores.md) leaves them: in
	// the working directory, the image's volume and systemd's state.
	for _, dir := range []string{work, filepath.Join(work, "app/var"), filepath.Join(work, "var/lib/hpfeeds")} {
		first := exec.Command(filepath.Join(bin, "hpfeeds-broker"), "user", "init")
		first.Dir = dir
		if out, err := first.CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}

	nats := storetest.NATS(t)

	users := brokertest.NewUsers(
		auth.User{Ident: "logger", Secret: "s3cret", SubChans: []string{"dionaea.capture", "cowrie.sessions"}},
		auth.User{Ident: "sensor1", Secret: "s3cret", PubChans: []string{"dionaea.capture"}},
		auth.User{Ident: "bench", Secret: "s3cret", PubChans: []string{"bench"}, SubChans: []string{"bench"}},
	)
	tcp := brokertest.Start(t, users)
	// The TCP broker's exporter, which the status commands read.
	mux := metrics.Handler(metrics.NewRegistry(tcp.Broker, nil))
	status.Mount(mux, tcp.Broker, status.Options{})
	exporter := httptest.NewServer(mux)
	t.Cleanup(exporter.Close)
	// The TLS broker serves broker.crt, which the TLS recipe rewrites:
	// its clients are served the certificate it makes.
	tls := brokertest.StartEndpoint(t, users, "tls:interface=127.0.0.1:port=0:cert="+filepath.Join(work, "broker.crt")+":key="+filepath.Join(work, "broker.key"))

	subst := []struct {
		re   *regexp.Regexp
		with string
	}{
		{regexp.MustCompile(`http://(127\.0\.0\.1|localhost):9431`), exporter.URL},
		{regexp.MustCompile(`nats://[^'"\s]*`), "nats://" + nats},
		{regexp.MustCompile(`\bport=\d+`), "port=0"},
		{regexp.MustCompile(`--exporter[= ](0\.0\.0\.0|127\.0\.0\.1):\d+`), "--exporter=127.0.0.1:0"},
		{regexp.MustCompile(`interface=10\.0\.0\.1`), "interface=127.0.0.1"},
		{regexp.MustCompile(`device=lan0`), "device=lo"},
		{regexp.MustCompile(`/app/bin/`), ""},
		{regexp.MustCompile(`(/etc/hpfeeds/|/var/lib/hpfeeds/|/app/var/)`), work + "$1"},
		{regexp.MustCompile(`--count 1000000`), "--count 1000"},
		{regexp.MustCompile(`--duration 10s`), "--duration 1s"},
	}
	// Each document gets databases of its own, so each can create the
	// tables its commands need, as a reader following it would.
	dbs := map[string]*docDatabases{}

	ran := 0
	for _, b := range blocks(t) {
		name := fmt.Sprintf("%s:%d", b.file, b.line)
		if b.skip != "" {
			t.Logf("%s: not run: %s", name, b.skip)
			continue
		}
		text := b.text
		d := dbs[b.file]
		if d == nil {
			d = newDocDatabases(t, work)
			dbs[b.file] = d
		}
		text = d.subst(text)
		for _, s := range subst {
			text = s.re.ReplaceAllString(text, s.with)
		}
		var cmd *exec.Cmd
		switch {
		case runLangs[b.lang]:
			cmd = exec.Command("bash", "-c", prelude+text)
		case strings.HasPrefix(b.lang, "sql:"):
			for _, db := range strings.Split(strings.TrimPrefix(b.lang, "sql:"), ",") {
				db = strings.TrimSpace(db)
				sh, ok := d.sqlShell()[db]
				if !ok {
					t.Fatalf("%s: run on %q: no such database here", name, db)
				}
				runBlock(t, name+" on "+db, exec.Command(sh[0], sh[1:]...), work, bin, repo, tcp.Addr, tls.Addr, text)
				ran++
			}
			continue
		case b.lang == "sql":
			t.Errorf("%s: a sql block needs <!-- run on: postgresql|mariadb|sqlite --> or <!-- not run: why --> above it", name)
			continue
		}
		runBlock(t, name, cmd, work, bin, repo, tcp.Addr, tls.Addr, "")
		ran++
	}
	if ran < 20 {
		t.Errorf("ran only %d blocks; the extraction is broken", ran)
	}
}

// docDatabases are one document's databases, made at its first use.
type docDatabases struct {
	t                   *testing.T
	work, pg, my, mongo string
}

func newDocDatabases(t *testing.T, work string) *docDatabases {
	return &docDatabases{t: t, work: work}
}

var (
	pgURL    = regexp.MustCompile(`database\+postgresql://[^'"\s]*`)
	myURL    = regexp.MustCompile(`database\+mysql://[^'"\s]*`)
	mongoURL = regexp.MustCompile(`mongodb://[^'"\s]*`)
)

// subst points the database URLs of text at the document's databases.
func (d *docDatabases) subst(text string) string {
	if pgURL.MatchString(text) {
		text = pgURL.ReplaceAllString(text, "database+postgresql://postgres@127.0.0.1:5432/"+d.postgres()+"?sslmode=disable")
	}
	if myURL.MatchString(text) {
		text = myURL.ReplaceAllString(text, "database+mysql://root@127.0.0.1:3306/"+d.mariadb())
	}
	if mongoURL.MatchString(text) {
		if d.mongo == "" {
			d.mongo, _ = storetest.MongoURI(d.t)
		}
		text = mongoURL.ReplaceAllString(text, d.mongo)
	}
	return text
}

func (d *docDatabases) postgres() string {
	if d.pg == "" {
		d.pg = storetest.PostgreSQL.NewDatabase(d.t)
	}
	return d.pg
}

func (d *docDatabases) mariadb() string {
	if d.my == "" {
		d.my = storetest.MariaDB.NewDatabase(d.t)
	}
	return d.my
}

// sqlShell is each database's shell reading SQL from standard input.
func (d *docDatabases) sqlShell() map[string][]string {
	return map[string][]string{
		"postgresql": {"psql", "-h", "127.0.0.1", "-U", "postgres", "-d", d.postgres(), "-v", "ON_ERROR_STOP=1", "-f", "-"},
		"mariadb":    {"mariadb", "-h", "127.0.0.1", "-u", "root", d.mariadb()},
		"sqlite":     {"sqlite3", filepath.Join(d.work, "ddl.db")},
	}
}

func runBlock(t *testing.T, name string, cmd *exec.Cmd, work, bin, repo, tcpAddr, tlsAddr, stdin string) {
	t.Helper()
	_, tcpPort, _ := net.SplitHostPort(tcpAddr)
	_, tlsPort, _ := net.SplitHostPort(tlsAddr)
	cmd.Dir = work
	cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "REPO="+repo,
		"HPFEEDS_PORT="+tcpPort, "HPFEEDS_TLS_PORT="+tlsPort)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			cmd.Process.Kill()
		case <-done:
		}
	}()
	out, err := cmd.CombinedOutput()
	close(done)
	if err != nil {
		t.Errorf("%s: %v\n%s", name, err, out)
	} else {
		t.Logf("%s: ok", name)
	}
}

func write(t *testing.T, path, data string) {
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}
