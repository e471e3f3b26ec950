// Package guesser guesses an ident's secret over many connections at once,
// as an attacker would, to measure what login throttling lets through. Each
// guess pipelines AUTH, SUBSCRIBE and PUBLISH in one write, so a right
// guess shows as its own message coming back within one round trip, and is
// abandoned when nothing comes back within Config.Abandon.
package guesser

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hpfeeds-go/hpfeeds/wire"
)

// Config is one guessing run.
type Config struct {
	Addr    string // the broker's host:port
	Local   string // the address to connect from ("" lets the system choose)
	Ident   string
	Channel string // one Ident may publish and subscribe to
	Conns   int    // guesses in flight at once
	Abandon time.Duration
	// Secret is the i-th guess, i from 0.
	Secret func(i int) string
}

// Result counts what the guesses got.
type Result struct {
	Tries     int64  // guesses sent
	Refused   int64  // answered with an error or a close
	Abandoned int64  // nothing back within Abandon
	Failed    int64  // no connection, or no INFO
	Found     string // the secret, if a guess logged in
}

// Run guesses until ctx ends or a guess logs in.
func Run(ctx context.Context, cfg Config) Result {
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	var next, tries, refused, abandoned, failed atomic.Int64
	var found atomic.Pointer[string]
	var wg sync.WaitGroup
	for range cfg.Conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				secret := cfg.Secret(int(next.Add(1) - 1))
				switch guess(ctx, cfg, secret) {
				case verdictFound:
					found.Store(&secret)
					stop()
				case verdictRefused:
					refused.Add(1)
				case verdictAbandoned:
					abandoned.Add(1)
				default:
					failed.Add(1)
					time.Sleep(time.Millisecond) // out of ports or fds: do not spin
					continue
				}
				tries.Add(1)
			}
		}()
	}
	wg.Wait()
	r := Result{Tries: tries.Load(), Refused: refused.Load(), Abandoned: abandoned.Load(), Failed: failed.Load()}
	if s := found.Load(); s != nil {
		r.Found = *s
	}
	return r
}

type verdict int

const (
	verdictFailed verdict = iota
	verdictFound
	verdictRefused
	verdictAbandoned
)

func guess(ctx context.Context, cfg Config, secret string) verdict {
	d := net.Dialer{Timeout: 2 * time.Second}
	if cfg.Local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(cfg.Local)}
	}
	nc, err := d.DialContext(ctx, "tcp", cfg.Addr)
	if err != nil {
		return verdictFailed
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(2 * time.Second))
	rd := wire.NewReader(nc, wire.UniformLimits(1<<16))
	info, err := rd.Next()
	if err != nil || info.Op != wire.OpInfo {
		return verdictFailed
	}
	ident, ch := []byte(cfg.Ident), []byte(cfg.Channel)
	b, _ := wire.AppendAuth(nil, info.Payload, cfg.Ident, secret)
	b, _ = wire.AppendSubscribe(b, ident, ch)
	b, _ = wire.AppendPublish(b, ident, ch, []byte("guess"))
	if _, err := nc.Write(b); err != nil {
		return verdictRefused
	}
	nc.SetReadDeadline(time.Now().Add(cfg.Abandon))
	f, err := rd.Next()
	switch {
	case err == nil && f.Op == wire.OpPublish:
		return verdictFound
	case errors.Is(err, os.ErrDeadlineExceeded):
		return verdictAbandoned
	}
	return verdictRefused
}
