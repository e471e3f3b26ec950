// Command conns measures connections at scale against hpfeeds or NATS: a
// storm of connect + login + subscribe, then the server's resident memory
// per idle connection (RSS from /proc/PID/status before and after).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"github.com/hpfeeds-go/hpfeeds/bench/internal/proc"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/hpfeeds-go/hpfeeds/wire"
)

func main() {
	proto := flag.String("proto", "hpfeeds", "hpfeeds or nats")
	addr := flag.String("addr", "", "host:port")
	pid := flag.Int("pid", 0, "server process, for its RSS")
	n := flag.Int("n", 5000, "connections")
	workers := flag.Int("workers", 64, "connections opened at once")
	ident := flag.String("ident", "bench", "")
	secret := flag.String("secret", "", "")
	idle := flag.Duration("idle", 5*time.Second, "how long connections sit idle before RSS is read")
	flag.Parse()

	var rl syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	rl.Cur = rl.Max
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	if int(rl.Cur) < *n+100 {
		fail(fmt.Errorf("RLIMIT_NOFILE %d is too low for %d connections", rl.Cur, *n))
	}

	time.Sleep(200 * time.Millisecond)
	before := proc.StatusKiB(*pid, "VmRSS")
	start := time.Now()
	held, failed := openAll(*n, *workers, func() (*conn, error) { return open(*proto, *addr, *ident, *secret) })
	missed := awaitBroadcast(held, func() error { return broadcast(*proto, *addr, *ident, *secret) })
	storm := time.Since(start)
	// Idle: let writers and buffers settle as they would overnight.
	time.Sleep(*idle)
	after := proc.StatusKiB(*pid, "VmRSS")
	ok := len(held)
	json.NewEncoder(os.Stdout).Encode(map[string]any{
		"connections": ok, "failed": failed + missed, "storm_seconds": storm.Seconds(),
		"storm_per_s":      float64(ok) / storm.Seconds(),
		"rss_kib_per_conn": float64(after-before) / float64(ok),
	})
	runtime.KeepAlive(held)
	if failed+missed > 0 {
		fmt.Fprintf(os.Stderr, "conns: %d of %d connections failed or missed the broadcast; the first: %v\n", failed+missed, *n, *firstErr.Load())
		os.Exit(1)
	}
}

// firstErr is the first failure, so that a failed run says why.
var firstErr atomic.Pointer[error]

// openAll opens n connections, workers at a time, and returns those that
// opened and how many failed.
func openAll(n, workers int, open func() (*conn, error)) (held []*conn, failed int64) {
	var mu sync.Mutex
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				c, err := open()
				mu.Lock()
				if err != nil {
					failed++
					firstErr.CompareAndSwap(nil, &err)
				} else {
					held = append(held, c)
				}
				mu.Unlock()
			}
		}()
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	return held, failed
}

// awaitBroadcast checks every connection is served: a broadcast reaches
// them all. hpfeeds does not acknowledge SUBSCRIBE, so it broadcasts until
// every connection has one (the last logins may still be in flight), and
// returns how many never got it.
func awaitBroadcast(held []*conn, broadcast func() error) int64 {
	var missed, waiting atomic.Int64
	var wg sync.WaitGroup
	waiting.Store(int64(len(held)))
	for _, c := range held {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer waiting.Add(-1)
			if err := c.await(); err != nil {
				missed.Add(1)
				err = fmt.Errorf("no broadcast: %w", err)
				firstErr.CompareAndSwap(nil, &err)
			}
		}()
	}
	for waiting.Load() > 0 {
		if err := broadcast(); err != nil {
			fail(err)
		}
	}
	wg.Wait()
	return missed.Load()
}

// conn is one idle subscriber; await waits for the broadcast.
type conn struct {
	await func() error
}

// open makes one logged-in connection subscribed to bench.idle.
func open(proto, addr, ident, secret string) (*conn, error) {
	if proto == "nats" {
		nc, err := nats.Connect("nats://"+addr, nats.Timeout(10*time.Second))
		if err != nil {
			return nil, err
		}
		sub, err := nc.SubscribeSync("bench.idle")
		if err != nil {
			return nil, err
		}
		return &conn{await: func() error { _, err := sub.NextMsg(30 * time.Second); return err }}, nc.Flush()
	}
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	rd := wire.NewReader(c, wire.UniformLimits(1024))
	info, err := rd.Next()
	if err != nil {
		c.Close()
		return nil, err
	}
	b, _ := wire.AppendAuth(nil, info.Payload, ident, secret)
	b, _ = wire.AppendSubscribe(b, []byte(ident), []byte("bench.idle"))
	if _, err := c.Write(b); err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return &conn{await: func() error {
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		f, err := rd.Next()
		if err == nil && f.Op != wire.OpPublish {
			err = fmt.Errorf("got %v %q", f.Op, f.Payload)
		}
		return err
	}}, nil
}

// broadcast publishes one message on bench.idle.
func broadcast(proto, addr, ident, secret string) error {
	if proto == "nats" {
		nc, err := nats.Connect("nats://" + addr)
		if err != nil {
			return err
		}
		defer nc.Close()
		nc.Publish("bench.idle", []byte("x"))
		return nc.Flush()
	}
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	rd := wire.NewReader(c, wire.UniformLimits(1024))
	info, err := rd.Next()
	if err != nil {
		return err
	}
	b, _ := wire.AppendAuth(nil, info.Payload, ident, secret)
	b, _ = wire.AppendPublish(b, []byte(ident), []byte("bench.idle"), []byte("x"))
	_, err = c.Write(b)
	time.Sleep(100 * time.Millisecond)
	return err
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "conns:", err)
	os.Exit(2)
}
