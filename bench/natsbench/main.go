// Command natsbench drives nats-server with the load shape of
// `hpfeeds bench` (the same load generator, internal/loadgen) and prints
// the same JSON, so bench/run.sh can compare the two brokers row by row.
// Core NATS pub/sub, no JetStream.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/hpfeeds-go/hpfeeds/internal/loadgen"
)

func main() {
	var cfg loadgen.Config
	url := flag.String("url", nats.DefaultURL, "NATS server")
	cfg.AddFlags(flag.CommandLine)
	subject := flag.String("subject", "bench", "")
	flag.Parse()
	cfg.FrameBytes = cfg.Size + 16
	cfg.Run = loadgen.NewRunID()

	sinks := make([]*loadgen.Sink, cfg.Subscribers)
	for i := range sinks {
		sinks[i] = subscribe(*url, *subject, cfg.Run, i)
	}
	pubs := make([]loadgen.Publisher, cfg.Publishers)
	for i := range pubs {
		nc, err := nats.Connect(*url)
		if err != nil {
			fail(err)
		}
		defer nc.Close()
		pubs[i] = &publisher{nc: nc, subject: *subject, paced: cfg.Rate > 0}
	}
	r := loadgen.Run(cfg, pubs, sinks, nil)
	json.NewEncoder(os.Stdout).Encode(r)
	if r.Lost != 0 {
		os.Exit(1)
	}
}

// subscribe connects subscriber i and returns once it hears its own probe.
// Its connection stays open until the program exits.
func subscribe(url, subject string, run loadgen.RunID, i int) *loadgen.Sink {
	s := loadgen.NewSink(run)
	nc, err := nats.Connect(url)
	if err != nil {
		fail(err)
	}
	probe := string(run.Probe(strconv.Itoa(i)))
	ready := make(chan struct{})
	sb, err := nc.Subscribe(subject, func(m *nats.Msg) {
		switch m.Data[0] {
		case loadgen.MarkReady:
			if string(m.Data) == probe {
				close(ready)
			}
		case loadgen.MarkBench:
			s.Record(m.Data)
		}
	})
	if err != nil {
		fail(err)
	}
	sb.SetPendingLimits(-1, -1) // pacing, not the client, bounds the backlog
	nc.Publish(subject, []byte(probe))
	nc.Flush()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		fail(fmt.Errorf("subscriber %d never saw its probe", i))
	}
	return s
}

// publisher publishes on one NATS connection; nats.go buffers and flushes
// on its own, so only a rate-paced run flushes before sleeping, as before.
type publisher struct {
	nc      *nats.Conn
	subject string
	paced   bool
}

func (p *publisher) Send(payload []byte) error {
	if err := p.nc.Publish(p.subject, payload); err != nil {
		fail(err)
	}
	return nil
}

func (p *publisher) Flush() error {
	if p.paced {
		return p.nc.Flush()
	}
	return nil
}

func (p *publisher) Done() error { return p.nc.Flush() }

func fail(err error) {
	fmt.Fprintln(os.Stderr, "natsbench:", err)
	os.Exit(2)
}
