// Command scrape measures what status-page scrapers cost a broker's
// deliveries: it holds idle subscribed connections, runs a healthy
// publisher and subscriber pair on channel "h" at a steady rate, first
// alone and then beside scrapers looping over the exporter's pages as fast
// as they can, and prints for each phase the pair's latency percentiles,
// the broker's CPU use and its peak RSS (VmHWM, reset through clear_refs
// first), as JSON lines.
package main

import (
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hpfeeds-go/hpfeeds/bench/internal/proc"
	"github.com/hpfeeds-go/hpfeeds/internal/loadgen"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

var (
	addr     = flag.String("addr", "127.0.0.1:10000", "broker host:port")
	exporter = flag.String("exporter", "127.0.0.1:9431", "the broker's --exporter host:port")
	ident    = flag.String("ident", "bench", "ident (it may publish and subscribe to h and bench.idle)")
	secret   = flag.String("secret", "benchsecret", "")
	pid      = flag.Int("pid", 0, "the broker's process id")
	conns    = flag.Int("conns", 5000, "idle subscribed connections held")
	scrapers = flag.Int("scrapers", 32, "clients looping over the pages")
	rate     = flag.Int("rate", 200, "messages a second the healthy pair sends")
	phase    = flag.Duration("phase", 15*time.Second, "how long each phase lasts")
	paths    = flag.String("paths", "/connz?limit=1000000,/,/identz,/chanz", "pages the scrapers loop over")
	sources  = flag.Int("sources", 1, "loopback addresses the scrapers come from (127.0.0.10 on): one, or one each")
	only     = flag.Bool("scrapers-only", false, "only scrape, until killed (the child process that scrapes)")
)

func main() {
	flag.Parse()
	if *only {
		scrapeAll(*scrapers)
		return
	}
	var rl syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	rl.Cur = rl.Max
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	held := holdIdle(*conns)
	lat := startPair()
	for _, n := range []int{0, *scrapers} {
		os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", *pid), []byte("5"), 0)
		// The scrapers run in their own process, as they would elsewhere:
		// they do not share this one's scheduler with the pair.
		var child *exec.Cmd
		if n > 0 {
			child = exec.Command(os.Args[0], append([]string{"-scrapers-only"}, os.Args[1:]...)...)
			child.Stdout, child.Stderr = os.Stdout, os.Stderr
			if err := child.Start(); err != nil {
				fail(err)
			}
		}
		lat.reset()
		cpu0, t0 := cpuTicks(*pid), time.Now()
		time.Sleep(*phase)
		cpu, secs := cpuTicks(*pid)-cpu0, time.Since(t0).Seconds()
		h, msgs := lat.reset()
		if child != nil {
			child.Process.Signal(syscall.SIGTERM)
			child.Wait()
		}
		json.NewEncoder(os.Stdout).Encode(map[string]any{
			"connections": len(held), "scrapers": n, "seconds": secs,
			"pair_messages": msgs, "pair_p50_ms": h.Quantile(0.5) / 1000, "pair_p99_ms": h.Quantile(0.99) / 1000,
			"pair_max_ms": float64(h.Max()) / 1000, "broker_cpu_percent": float64(cpu) / secs, // 100 ticks a second
			"peak_rss_mib": float64(proc.StatusKiB(*pid, "VmHWM")) / 1024,
		})
	}
	runtime.KeepAlive(held)
}

// scrapeAll runs n scrapers until SIGTERM, then prints the pages they read.
func scrapeAll(n int) {
	var pages, failed atomic.Int64
	for i := range n {
		go scrape(fmt.Sprintf("127.0.0.%d", 10+i%*sources), &pages, &failed)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	<-sig
	json.NewEncoder(os.Stdout).Encode(map[string]any{"scrapers": n, "pages": pages.Load(), "pages_failed": failed.Load()})
}

// holdIdle opens n connections, each logged in and subscribed to
// bench.idle, and returns those that opened: kept, they stay open (a
// connection collected as garbage is closed).
func holdIdle(n int) []net.Conn {
	var (
		mu   sync.Mutex
		held []net.Conn
		wg   sync.WaitGroup
	)
	jobs := make(chan struct{})
	for range 64 {
		wg.Go(func() {
			for range jobs {
				if nc, err := login(); err == nil {
					sub, _ := wire.AppendSubscribe(nil, []byte(*ident), []byte("bench.idle"))
					nc.Write(sub)
					mu.Lock()
					held = append(held, nc)
					mu.Unlock()
				}
			}
		})
	}
	for range n {
		jobs <- struct{}{}
	}
	close(jobs)
	wg.Wait()
	return held
}

func login() (net.Conn, error) {
	nc, err := net.DialTimeout("tcp", *addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	info, err := wire.NewReader(nc, wire.UniformLimits(1024)).Next()
	if err != nil {
		nc.Close()
		return nil, err
	}
	a, _ := wire.AppendAuth(nil, info.Payload, *ident, *secret)
	_, err = nc.Write(a)
	nc.SetDeadline(time.Time{})
	return nc, err
}

// latencies is what the pair's subscriber measured since the last reset.
type latencies struct {
	mu sync.Mutex
	h  *loadgen.Latencies
	n  int
}

func (l *latencies) reset() (h *loadgen.Latencies, n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	h, n = l.h, l.n
	l.h, l.n = &loadgen.Latencies{}, 0
	return h, n
}

// startPair subscribes to h and publishes the send time there at -rate.
func startPair() *latencies {
	lat := &latencies{h: &loadgen.Latencies{}}
	sub, err := login()
	if err != nil {
		fail(err)
	}
	f, _ := wire.AppendSubscribe(nil, []byte(*ident), []byte("h"))
	sub.Write(f)
	go func() {
		rd := wire.NewReader(sub, wire.UniformLimits(1<<20))
		for {
			fr, err := rd.Next()
			if err != nil {
				fail(fmt.Errorf("the pair's subscriber: %w", err))
			}
			if fr.Op == wire.OpPublish && len(fr.Payload) == 8 {
				us := time.Now().UnixMicro() - int64(binary.BigEndian.Uint64(fr.Payload))
				lat.mu.Lock()
				lat.h.Add(uint64(max(us, 0)))
				lat.n++
				lat.mu.Unlock()
			}
		}
	}()
	pub, err := login()
	if err != nil {
		fail(err)
	}
	time.Sleep(200 * time.Millisecond) // the subscription in place
	go func() {
		tick := time.NewTicker(time.Second / time.Duration(*rate))
		for range tick.C {
			m, _ := wire.AppendPublish(nil, []byte(*ident), []byte("h"),
				binary.BigEndian.AppendUint64(nil, uint64(time.Now().UnixMicro())))
			if _, err := pub.Write(m); err != nil {
				fail(fmt.Errorf("the pair's publisher: %w", err))
			}
		}
	}()
	return lat
}

// scrape loops over the pages on its own keep-alive connection from src,
// counting the pages read and those that failed (429 included).
func scrape(src string, pages, failed *atomic.Int64) {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 1}}
	for i := 0; ; i++ {
		ps := strings.Split(*paths, ",")
		resp, err := c.Get("http://" + *exporter + ps[i%len(ps)])
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				err = fmt.Errorf("%s", resp.Status)
			}
		}
		if err != nil {
			failed.Add(1)
			continue
		}
		pages.Add(1)
	}
}

// cpuTicks is the process's user and system time, in clock ticks.
func cpuTicks(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:]) // fields from the 3rd on
	u, _ := strconv.ParseInt(f[11], 10, 64)
	k, _ := strconv.ParseInt(f[12], 10, 64)
	return u + k
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "scrape:", err)
	os.Exit(2)
}
