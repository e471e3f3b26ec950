package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"gopkg.in/yaml.v3"

	"github.com/hpfeeds-go/hpfeeds/auth/storetest"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
	"github.com/hpfeeds-go/hpfeeds/internal/testcert"
)

// The image, as the Dockerfile builds it. No Docker engine runs here, so
// the Dockerfile is checked by parsing.
type image struct {
	cmd        []string
	entrypoint []string
	workdir    string
	volumes    []string
	expose     []string
	user       string
	env        []string
}

func parseDockerfile(t *testing.T) image {
	f, err := os.Open("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := parser.Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	var img image
	stage := 0
	for _, n := range res.AST.Children {
		var args []string
		for a := n.Next; a != nil; a = a.Next {
			args = append(args, a.Value)
		}
		switch strings.ToLower(n.Value) {
		case "from":
			stage++
			img = image{} // only the last stage is the image
		case "cmd":
			img.cmd = args
		case "entrypoint":
			img.entrypoint = args
		case "workdir":
			img.workdir = args[0]
		case "volume":
			img.volumes = append(img.volumes, args...)
		case "expose":
			img.expose = append(img.expose, args...)
		case "user":
			img.user = args[0]
		case "env":
			img.env = append(img.env, strings.Join(args, "="))
		case "run":
			if stage == 1 && !strings.Contains(strings.Join(args, " "), "CGO_ENABLED=0") && strings.Contains(strings.Join(args, " "), "go build") {
				t.Errorf("build is not static: %v", args)
			}
		}
	}
	if stage != 2 {
		t.Errorf("%d stages, want a build and a runtime stage", stage)
	}
	return img
}

func TestDockerfileLayout(t *testing.T) {
	img := parseDockerfile(t)
	if img.workdir != "/app/var" || !slices.Equal(img.volumes, []string{"/app/var"}) {
		t.Errorf("workdir %q volumes %v", img.workdir, img.volumes)
	}
	if !slices.Contains(img.expose, "10000/tcp") || !slices.Contains(img.expose, "9431/tcp") {
		t.Errorf("expose %v", img.expose)
	}
	// The entrypoint starts as root to fix the volume's ownership, then
	// drops to hpfeeds (TestDockerEntrypoint).
	if img.user != "" || !slices.Equal(img.entrypoint, []string{"/app/bin/docker-entrypoint.sh"}) {
		t.Errorf("USER %q, ENTRYPOINT %v", img.user, img.entrypoint)
	}
	if len(img.cmd) == 0 || img.cmd[0] != "/app/bin/hpfeeds-broker" ||
		!slices.Contains(img.cmd, "--endpoint=tcp:port=10000") || !slices.Contains(img.cmd, "--exporter=0.0.0.0:9431") ||
		!slices.Contains(img.cmd, "--auth=/app/var/sqlite.db") {
		t.Errorf("CMD %v", img.cmd)
	}
	data, _ := os.ReadFile("../../Dockerfile")
	for _, want := range []string{"apk --no-cache add sqlite ca-certificates setpriv", "adduser -D -H -u 10001 hpfeeds", "COPY packaging/docker-entrypoint.sh /app/bin/"} {
		if !strings.Contains(string(data), want) {
			t.Errorf("the runtime image lacks %q", want)
		}
	}
}

type compose struct {
	Services map[string]struct {
		Image       string            `yaml:"image"`
		Environment map[string]string `yaml:"environment"`
		Command     []string          `yaml:"command"`
	} `yaml:"services"`
}

// Every example compose file's command line goes through the broker's own
// flag parsing with --check-config, in a directory standing for the
// image's /app/var. What the host supplies is substituted: /app/var is the
// test's directory, the NIC lan0 is lo, ports are 0 (so nothing collides),
// and broker.key/broker.crt are a generated pair.
func TestComposeExamples(t *testing.T) {
	img := parseDockerfile(t)
	files, _ := filepath.Glob("../../examples/*/docker-compose.yml")
	if len(files) < 6 {
		t.Fatalf("only %d compose files", len(files))
	}
	port := regexp.MustCompile(`port=\d+`)
	exporter := regexp.MustCompile(`--exporter=([^:]+):\d+`)
	for _, file := range files {
		t.Run(filepath.Base(filepath.Dir(file)), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			var c compose
			if err := yaml.Unmarshal(data, &c); err != nil {
				t.Fatal(err)
			}
			brokers := 0
			for name, svc := range c.Services {
				if svc.Image != "hpfeeds-go/hpfeeds-broker" {
					continue // NATS, PostgreSQL: the services a broker uses
				}
				brokers++
				args := svc.Command
				if len(args) == 0 {
					args = img.cmd
				}
				if args[0] != "/app/bin/hpfeeds-broker" && args[0] != "hpfeeds-broker" {
					t.Fatalf("%s: command %v does not run the broker", name, args)
				}
				dir := t.TempDir()
				writeCert(t, dir)
				initSQLite(t, dir) // a volume the broker has started on once, so --check-config checks the table
				var argv []string
				for _, a := range args[1:] {
					a = strings.ReplaceAll(a, "/app/var", dir)
					a = port.ReplaceAllString(a, "port=0")
					a = exporter.ReplaceAllString(a, "--exporter=127.0.0.1:0")
					a = strings.ReplaceAll(a, "device=lan0", "device=lo")
					// The cluster example's services, as this machine has them.
					if pg := "hpfeeds:${POSTGRES_PASSWORD}@postgres:5432/hpfeeds"; strings.Contains(a, pg) {
						a = strings.ReplaceAll(a, pg, "postgres@127.0.0.1:5432/"+exampleDB(t))
					}
					if strings.HasPrefix(a, "--cluster=") {
						a = "--cluster=nats://" + natsAddr(t)
					}
					argv = append(argv, a)
				}
				cmd := exec.Command(binary, append(argv, "--check-config")...)
				cmd.Dir = dir
				cmd.Env = os.Environ()
				for k, v := range svc.Environment {
					cmd.Env = append(cmd.Env, k+"="+v)
				}
				out, err := cmd.CombinedOutput()
				if err != nil || !strings.Contains(string(out), "configuration OK") {
					t.Errorf("%s: %v: %v\n%s", name, argv, err, out)
				}
			}
			if brokers == 0 {
				t.Error("no service runs hpfeeds-go/hpfeeds-broker")
			}
		})
	}
}

// initSQLite creates dir/sqlite.db as `hpfeeds-broker user init` does.
func initSQLite(t *testing.T, dir string) {
	t.Helper()
	if code, out := run(t, nil, "user", "init", "--auth="+filepath.Join(dir, "sqlite.db")); code != 0 {
		t.Fatalf("user init: %s", out)
	}
}

// exampleDB is a database holding the table the cluster example's
// PostgreSQL creates from examples/cluster/auth_keys.sql.
func exampleDB(t *testing.T) string {
	t.Helper()
	ddl, err := os.ReadFile("../../examples/cluster/auth_keys.sql")
	if err != nil {
		t.Fatal(err)
	}
	db := storetest.PostgreSQL.NewDatabase(t)
	storetest.PostgreSQL.Exec(t, db, string(ddl))
	return db
}

// The systemd unit passes systemd's own checks, with ExecStart pointing at
// the binary these tests built.
func TestSystemdUnit(t *testing.T) {
	data, err := os.ReadFile("../../packaging/hpfeeds-broker.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := string(data)
	for _, want := range []string{"Type=simple", "Restart=on-failure", "StateDirectory=hpfeeds", "DynamicUser=yes", "NoNewPrivileges=yes", "ProtectSystem=strict"} {
		if !strings.Contains(unit, "\n"+want+"\n") {
			t.Errorf("unit lacks %s", want)
		}
	}
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatalf("systemd-analyze not found (apt-get install systemd): %v", err)
	}
	path := filepath.Join(t.TempDir(), "hpfeeds-broker.service")
	os.WriteFile(path, []byte(strings.ReplaceAll(unit, "/usr/local/bin/hpfeeds-broker", binary)), 0o644)
	if out, err := exec.Command(analyze, "verify", path).CombinedOutput(); err != nil || len(out) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	// Its command line is one the broker accepts.
	for _, l := range strings.Split(unit, "\n") {
		if rest, ok := strings.CutPrefix(l, "ExecStart=/usr/local/bin/hpfeeds-broker "); ok {
			state := t.TempDir()
			initSQLite(t, state)
			argv := strings.Fields(strings.ReplaceAll(rest, "/var/lib/hpfeeds", state))
			for i, a := range argv {
				argv[i] = regexp.MustCompile(`port=\d+|:9431`).ReplaceAllStringFunc(a, func(m string) string {
					if m == ":9431" {
						return ":0"
					}
					return "port=0"
				})
			}
			if code, out := run(t, nil, append(argv, "--check-config")...); code != 0 {
				t.Fatalf("ExecStart %v: %s", argv, out)
			}
		}
	}
}

// natsAddr starts the machine's nats-server for the test.
func natsAddr(t *testing.T) string {
	addr, _ := startNATS(t)
	return addr
}

// startNATS starts the machine's nats-server until the test ends.
func startNATS(t *testing.T, args ...string) (string, *exec.Cmd) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr, startNATSOn(t, addr, args...)
}

// startNATSOn starts the machine's nats-server on addr until the test ends.
func startNATSOn(t *testing.T, addr string, args ...string) *exec.Cmd {
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		t.Fatalf("nats-server not installed (apt-get install nats-server): %v", err)
	}
	_, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command(bin, append([]string{"-a", "127.0.0.1", "-p", port}, args...)...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for i := 0; i < 200; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return cmd
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatal("nats-server did not start")
	return nil
}

// The image's entrypoint, run here with a fake /app/var: a volume left by
// the Python image (root's sqlite.db, a 0600 broker.key) is given to the
// broker's user, and the command runs as that user and can write the
// database and read the key. nobody stands for the image's hpfeeds.
func TestDockerEntrypoint(t *testing.T) {
	if os.Getuid() != 0 {
		storetest.Missing(t, "the entrypoint's chown needs root")
	}
	// Under /tmp itself: the command, as nobody, must reach the directory.
	dir, err := os.MkdirTemp("", "app-var")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	initSQLite(t, dir) // as root, as the Python image left it
	os.WriteFile(filepath.Join(dir, "broker.key"), []byte("key"), 0o600)
	entrypoint := func(args ...string) (string, error) {
		cmd := exec.Command("sh", append([]string{"../../packaging/docker-entrypoint.sh"}, args...)...)
		cmd.Env = append(os.Environ(), "HPFEEDS_USER=nobody", "HPFEEDS_GROUP=nogroup", "HPFEEDS_STATE_DIR="+dir)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := entrypoint(binary, "user", "add", "--auth="+filepath.Join(dir, "sqlite.db"), "--ident=sensor1")
	if err != nil || !strings.Contains(out, "user sensor1 added") {
		t.Fatalf("user add through the entrypoint: %v\n%s", err, out)
	}
	out, err = entrypoint("sh", "-c", "id -un; cat "+filepath.Join(dir, "broker.key"))
	if err != nil || out != "nobody\nkey" {
		t.Fatalf("command ran as, and read: %q (%v)", out, err)
	}
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if st, ok := info.Sys().(*syscall.Stat_t); !ok || st.Uid != 65534 {
			t.Errorf("%s not given to nobody", p)
		}
		return nil
	})
	if code, out := run(t, nil, "--check-config", "--auth="+filepath.Join(dir, "sqlite.db")); code != 0 {
		t.Fatalf("the database after the entrypoint: %s", out)
	}
}

// writeCert writes broker.crt and broker.key into dir.
func writeCert(t *testing.T, dir string) {
	testcert.NewCA(t).WriteFiles(t, dir, "broker", "broker")
}

// The Python broker's documented SQLite workflow (its docs/broker.rst,
// "SQLite authentication store") on this image: `docker-compose up` on an
// empty volume runs the image's CMD through its entrypoint and creates an
// empty database; `docker-compose run --rm hpfeeds sqlite3 sqlite.db`
// inserts a user as those docs write it; the user logs in, publishes and
// subscribes without a restart. HPFEEDS_STATE_DIR stands for /app/var.
func TestPythonDocsSQLiteWorkflow(t *testing.T) {
	img := parseDockerfile(t)
	dir, err := os.MkdirTemp("", "app-var") // under /tmp: the broker's user must reach it
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	env := append(os.Environ(), "HPFEEDS_STATE_DIR="+dir, "HPFEEDS_USER=nobody", "HPFEEDS_GROUP=nogroup")
	script, err := filepath.Abs("../../packaging/docker-entrypoint.sh")
	if err != nil {
		t.Fatal(err)
	}
	entrypoint := []string{"sh", script}
	var argv []string
	for _, a := range img.cmd {
		a = strings.ReplaceAll(a, "/app/var", dir)
		a = strings.ReplaceAll(a, "tcp:port=10000", "tcp:interface=127.0.0.1:port=0")
		a = strings.ReplaceAll(a, "0.0.0.0:9431", "127.0.0.1:0")
		argv = append(argv, strings.ReplaceAll(a, "/app/bin/hpfeeds-broker", binary))
	}
	up := exec.Command(entrypoint[0], append(entrypoint[1:], argv...)...)
	up.Dir, up.Env = dir, env
	p := startProcess(t, up, true)
	if log := p.logSoFar(); !strings.Contains(log, `msg="created empty credential store" path=`+filepath.Join(dir, "sqlite.db")) {
		t.Fatalf("no database created:\n%s", log)
	}
	if st, err := os.Stat(filepath.Join(dir, "sqlite.db")); err != nil || os.Getuid() == 0 && st.Sys().(*syscall.Stat_t).Uid != 65534 {
		t.Fatalf("sqlite.db not created by the broker's user nobody: %v", err)
	}
	run := exec.Command(entrypoint[0], append(entrypoint[1:], "sqlite3", "sqlite.db")...)
	run.Dir, run.Env, run.Stdin = dir, env, strings.NewReader(pythonDocsInsert)
	if out, err := run.CombinedOutput(); err != nil || len(out) > 0 {
		t.Fatalf("sqlite3 through the entrypoint: %v\n%s", err, out)
	}
	c := brokertest.Login(t, p.addr, "ident", "secret")
	c.Send(brokertest.Subscribe(t, "ident", "chan1"), brokertest.Publish(t, "ident", "chan1", "hello"))
	c.ExpectMessage("ident", "chan1", "hello")
}
