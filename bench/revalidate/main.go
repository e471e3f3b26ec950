// Command revalidate measures how soon the broker cuts off users removed
// from a PostgreSQL store behind network latency: it creates a database of
// -sessions users, starts the broker on it through a proxy that delays
// every packet by -latency each way, logs every user in (one session
// each), removes -remove users spread over the idents, and prints as JSON
// how long each of their sessions lasted after the DELETE.
package main

import (
	"database/sql"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/hpfeeds-go/hpfeeds/internal/tcpproxy"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

var (
	dsn      = flag.String("pg", "postgres://postgres@127.0.0.1:5432/test", "an existing PostgreSQL database to create the test database from")
	bin      = flag.String("broker", "hpfeeds-broker", "the broker binary")
	sessions = flag.Int("sessions", 5000, "users, each with one session")
	remove   = flag.Int("remove", 20, "users removed")
	latency  = flag.Duration("latency", 10*time.Millisecond, "added to every packet each way between broker and database")
	every    = flag.Duration("every", time.Second, "--revalidate-every")
)

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "revalidate:", err)
		os.Exit(1)
	}
}

func run() error {
	admin, err := sql.Open("pgx", *dsn)
	if err != nil {
		return err
	}
	defer admin.Close()
	name := fmt.Sprintf("hpfeeds_reval_%d", time.Now().UnixNano())
	if _, err := admin.Exec("CREATE DATABASE " + name); err != nil {
		return err
	}
	defer func() {
		admin.Exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '" + name + "'")
		admin.Exec("DROP DATABASE " + name)
	}()
	db, err := sql.Open("pgx", (*dsn)[:strings.LastIndex(*dsn, "/")+1]+name)
	if err != nil {
		return err
	}
	defer db.Close()
	if _, err := db.Exec(fmt.Sprintf(`CREATE TABLE auth_keys (id serial PRIMARY KEY, identifier varchar(36) UNIQUE,
		secret varchar(36), publish json, subscribe json);
		INSERT INTO auth_keys (identifier, secret, publish, subscribe)
		SELECT 'r' || i, 'x', '["c"]', '["c"]' FROM generate_series(0, %d) i`, *sessions-1)); err != nil {
		return err
	}
	host := (*dsn)[strings.Index(*dsn, "@")+1 : strings.LastIndex(*dsn, "/")]
	proxy, err := tcpproxy.New(host)
	if err != nil {
		return err
	}
	defer proxy.Close()
	addr, stop, err := startBroker("database+postgresql://postgres@" + proxy.Addr() + "/" + name)
	if err != nil {
		return err
	}
	defer stop()
	conns, err := logIn(addr)
	if err != nil {
		return err
	}
	proxy.SetLatency(*latency)
	time.Sleep(3 * *every) // rounds behind the latency
	return cutOff(db, conns)
}

func startBroker(auth string) (addr string, stop func(), err error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	addr = l.Addr().String()
	l.Close()
	cmd := exec.Command(*bin, "--auth="+auth, "-e", "tcp:interface=127.0.0.1:port="+addr[strings.LastIndex(addr, ":")+1:],
		"--revalidate-every="+every.String(), "--log-level=warn")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop = func() { cmd.Process.Kill(); cmd.Wait() }
	for range 100 {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return addr, stop, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	stop()
	return "", nil, fmt.Errorf("the broker did not listen on %s", addr)
}

// logIn opens one session per user, each checked by its own message coming
// back, 32 at a time.
func logIn(addr string) ([]net.Conn, error) {
	conns := make([]net.Conn, *sessions)
	errs := make(chan error, *sessions)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := login(addr, fmt.Sprint("r", i))
			conns[i] = c
			if err != nil {
				errs <- fmt.Errorf("r%d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	return conns, <-errs
}

func login(addr, ident string) (net.Conn, error) {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	rd := wire.NewReader(nc, wire.UniformLimits(1<<16))
	info, err := rd.Next()
	if err != nil {
		return nc, err
	}
	b, _ := wire.AppendAuth(nil, info.Payload, ident, "x")
	b, _ = wire.AppendSubscribe(b, []byte(ident), []byte("c"))
	b, _ = wire.AppendPublish(b, []byte(ident), []byte("c"), []byte("hi"))
	if _, err := nc.Write(b); err != nil {
		return nc, err
	}
	if f, err := rd.Next(); err != nil || f.Op != wire.OpPublish {
		return nc, fmt.Errorf("login not confirmed: %v %v", f.Op, err)
	}
	nc.SetDeadline(time.Time{})
	return nc, nil
}

// cutOff removes users spread over the idents and times the end of each
// one's session.
func cutOff(db *sql.DB, conns []net.Conn) error {
	var idents []string
	for i := range *remove {
		idents = append(idents, fmt.Sprint("r", i**sessions / *remove))
	}
	start := time.Now()
	if _, err := db.Exec("DELETE FROM auth_keys WHERE identifier = ANY($1)", idents); err != nil {
		return err
	}
	took := make([]float64, len(idents))
	var wg sync.WaitGroup
	for k := range idents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := conns[k**sessions / *remove]
			c.SetReadDeadline(start.Add(5 * time.Minute))
			buf := make([]byte, 4096)
			for {
				if _, err := c.Read(buf); err != nil {
					break
				}
			}
			took[k] = time.Since(start).Round(time.Millisecond).Seconds()
		}()
	}
	wg.Wait()
	slices.Sort(took)
	return json.NewEncoder(os.Stdout).Encode(map[string]any{
		"sessions": *sessions, "latency": latency.String(), "revalidate_every": every.String(),
		"removed": len(idents), "cut_off_s_median": took[len(took)/2], "cut_off_s_max": took[len(took)-1],
	})
}
