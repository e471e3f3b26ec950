// Command guess runs the parallel password guesser of internal/guesser
// against a running broker from one source address, while a good sensor
// (another ident, from the same address) logs in once a second, and prints
// as JSON: the guesses sent, the guesses the broker checked (its
// connection_error_total for wrong secrets and unknown idents, read from
// its exporter), the broker's peak open file descriptors, and the good
// logins' outcome.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hpfeeds-go/hpfeeds/internal/guesser"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

var (
	addr       = flag.String("addr", "127.0.0.1:10000", "broker host:port")
	local      = flag.String("local", "127.0.0.2", "the address to guess and log in from")
	ident      = flag.String("ident", "sensor", "the ident guessed (it may publish and subscribe to -channel)")
	channel    = flag.String("channel", "x", "")
	goodIdent  = flag.String("good-ident", "good", "the sensor that logs in beside the guesser; it may publish and subscribe to -channel")
	goodSecret = flag.String("good-secret", "goodsecret", "")
	conns      = flag.Int("conns", 64, "guesses in flight")
	hold       = flag.Duration("hold", 20*time.Second, "how long the guessing goes on")
	metricsURL = flag.String("metrics", "http://127.0.0.1:9431/metrics", "the broker's exporter")
	pid        = flag.Int("pid", 0, "the broker's process id, for its file descriptors")
)

func main() {
	flag.Parse()
	before := checked()
	ctx, cancel := context.WithTimeout(context.Background(), *hold)
	defer cancel()
	peak := make(chan int)
	go func() { peak <- peakFDs(ctx) }()
	good := make(chan []float64)
	go func() { good <- goodLogins(ctx) }()
	r := guesser.Run(ctx, guesser.Config{
		Addr: *addr, Local: *local, Ident: *ident, Channel: *channel,
		Conns: *conns, Abandon: 20 * time.Millisecond,
		Secret: func(i int) string { return fmt.Sprint("guess", i) },
	})
	n := checked() - before
	logins := <-good
	json.NewEncoder(os.Stdout).Encode(map[string]any{
		"conns": *conns, "seconds": hold.Seconds(), "guesses_sent": r.Tries, "guesses_checked": n,
		"checked_per_s": float64(n) / hold.Seconds(), "found": r.Found != "",
		"broker_peak_fds": <-peak, "good_logins_s": logins,
	})
}

// checked is the broker's count of logins refused for a wrong secret or
// an unknown ident: the guesses it checked.
func checked() int64 {
	resp, err := http.Get(*metricsURL)
	if err != nil {
		fmt.Fprintln(os.Stderr, "guess:", err)
		os.Exit(1)
	}
	defer resp.Body.Close()
	var n int64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "hpfeeds_broker_connection_error_total{") &&
			(strings.Contains(l, `category="invalid-secret"`) || strings.Contains(l, `category="invalid-ident"`)) {
			f := strings.Fields(l)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			n += int64(v)
		}
	}
	return n
}

func peakFDs(ctx context.Context) int {
	peak := 0
	for ctx.Err() == nil {
		if fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", *pid)); err == nil {
			peak = max(peak, len(fds))
		}
		time.Sleep(50 * time.Millisecond)
	}
	return peak
}

// goodLogins logs the good sensor in once a second and returns how long
// each took to round-trip a message (-1: it failed).
func goodLogins(ctx context.Context) []float64 {
	var out []float64
	for ctx.Err() == nil {
		start := time.Now()
		if err := goodLogin(); err != nil {
			out = append(out, -1)
		} else {
			out = append(out, time.Since(start).Round(time.Millisecond).Seconds())
		}
		time.Sleep(time.Until(start.Add(time.Second)))
	}
	return out
}

func goodLogin() error {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(*local)}}
	nc, err := d.Dial("tcp", *addr)
	if err != nil {
		return err
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	rd := wire.NewReader(nc, wire.UniformLimits(1<<16))
	info, err := rd.Next()
	if err != nil {
		return err
	}
	id, ch := []byte(*goodIdent), []byte(*channel)
	b, _ := wire.AppendAuth(nil, info.Payload, *goodIdent, *goodSecret)
	b, _ = wire.AppendSubscribe(b, id, ch)
	b, _ = wire.AppendPublish(b, id, ch, []byte("ping"))
	if _, err := nc.Write(b); err != nil {
		return err
	}
	f, err := rd.Next()
	if err == nil && f.Op != wire.OpPublish {
		err = fmt.Errorf("got %v, not the message back", f.Op)
	}
	return err
}
