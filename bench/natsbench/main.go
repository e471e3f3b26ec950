// Command natsbench drives nats-server with the load shape of
// `hpfeeds bench` (the same load generator, internal/loadgen) and prints
// the same JSON, so bench/run.sh can compare the two brokers row by row.
// By default it uses core NATS pub/sub, its publishers writing the NATS
// protocol themselves (rawPublisher) so that they put messages on the wire
// exactly as hpfeeds bench's publishers do. With -jetstream the subject is
// captured by a file-backed JetStream stream, publishers publish with
// asynchronous acknowledgements (at most 4,096 in flight each) and every
// subscriber reads through its own durable pull consumer, acknowledging
// each message: what a nats-server user does for reliable delivery.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/hpfeeds-go/hpfeeds/internal/loadgen"
)

func main() {
	if !run() {
		os.Exit(1)
	}
}

// run reports whether every message reached every subscriber.
func run() bool {
	var cfg loadgen.Config
	url := flag.String("url", nats.DefaultURL, "NATS server")
	cfg.AddFlags(flag.CommandLine)
	subject := flag.String("subject", "bench", "")
	js := flag.Bool("jetstream", false, "capture the subject in a file-backed stream; subscribers read through durable consumers")
	flag.Parse()
	cfg.FrameBytes = cfg.Size + 16
	cfg.Run = loadgen.NewRunID()

	var stream string
	if *js {
		stream = createStream(*url, *subject)
		defer deleteStream(*url, stream)
	}
	sinks := make([]*loadgen.Sink, cfg.Subscribers)
	for i := range sinks {
		sinks[i] = subscribe(*url, *subject, stream, cfg.Run, i)
	}
	pubs := make([]loadgen.Publisher, cfg.Publishers)
	for i := range pubs {
		if !*js {
			p := dialRaw(*url, *subject, cfg.Size)
			defer p.nc.Close()
			pubs[i] = p
			continue
		}
		nc, err := nats.Connect(*url)
		if err != nil {
			fail(err)
		}
		defer nc.Close()
		pubs[i] = &publisher{nc: nc, js: newJetStream(nc), subject: *subject}
	}
	r := loadgen.Run(cfg, pubs, sinks, nil)
	json.NewEncoder(os.Stdout).Encode(r)
	return r.Lost == 0
}

func newJetStream(nc *nats.Conn) jetstream.JetStream {
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, _ *nats.Msg, err error) {
			fail(fmt.Errorf("publish not stored: %w", err))
		}))
	if err != nil {
		fail(err)
	}
	return js
}

// createStream makes a fresh file-backed stream capturing subject.
func createStream(url, subject string) string {
	nc, err := nats.Connect(url)
	if err != nil {
		fail(err)
	}
	defer nc.Close()
	name := "BENCH_" + strings.NewReplacer(".", "_", "*", "_", ">", "_").Replace(subject)
	js := newJetStream(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := js.DeleteStream(ctx, name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		fail(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{subject}, Storage: jetstream.FileStorage}); err != nil {
		fail(fmt.Errorf("creating stream %s (is JetStream on? nats-server -js): %w", name, err))
	}
	return name
}

func deleteStream(url, name string) {
	if nc, err := nats.Connect(url); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		newJetStream(nc).DeleteStream(ctx, name)
		cancel()
		nc.Close()
	}
}

// subscribe connects subscriber i, through a durable consumer of stream
// if one is given, and returns once it hears its own probe. Its
// connection stays open until the program exits.
func subscribe(url, subject, stream string, run loadgen.RunID, i int) *loadgen.Sink {
	s := loadgen.NewSink(run)
	nc, err := nats.Connect(url)
	if err != nil {
		fail(err)
	}
	probe := string(run.Probe(strconv.Itoa(i)))
	ready := make(chan struct{})
	handle := func(data []byte) {
		switch data[0] {
		case loadgen.MarkReady:
			if string(data) == probe {
				close(ready)
			}
		case loadgen.MarkBench:
			s.Record(data)
		}
	}
	if stream == "" {
		sb, err := nc.Subscribe(subject, func(m *nats.Msg) { handle(m.Data) })
		if err != nil {
			fail(err)
		}
		sb.SetPendingLimits(-1, -1) // pacing, not the client, bounds the backlog
		nc.Publish(subject, []byte(probe))
	} else {
		consume(nc, stream, "sub"+strconv.Itoa(i), handle)
		if _, err := newJetStream(nc).Publish(context.Background(), subject, []byte(probe)); err != nil {
			fail(err)
		}
	}
	nc.Flush()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		fail(fmt.Errorf("subscriber %d never saw its probe", i))
	}
	return s
}

// consume reads stream through the durable pull consumer durable, with
// explicit acknowledgement of each message, the client's default batching.
func consume(nc *nats.Conn, stream, durable string, handle func([]byte)) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cons, err := newJetStream(nc).CreateOrUpdateConsumer(ctx, stream, jetstream.ConsumerConfig{
		Durable: durable, AckPolicy: jetstream.AckExplicitPolicy, DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		fail(err)
	}
	_, err = cons.Consume(func(m jetstream.Msg) {
		handle(m.Data())
		m.Ack()
	}, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		if errors.Is(err, jetstream.ErrConsumerDeleted) {
			return // the stream is deleted as the program ends
		}
		fmt.Fprintln(os.Stderr, "natsbench: consumer", durable+":", err)
	}))
	if err != nil {
		fail(err)
	}
}

// publisher publishes to the stream on one NATS connection, with
// asynchronous acks. nats.go's flusher goroutine writes each publish
// soon after it is made; its Flush, a round trip, is left to Done.
type publisher struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	subject string
}

func (p *publisher) Send(payload []byte) error {
	if _, err := p.js.PublishAsync(p.subject, payload, jetstream.WithStallWait(30*time.Second)); err != nil {
		fail(err)
	}
	return nil
}

func (p *publisher) Flush() error { return nil }

func (p *publisher) Done() error {
	select {
	case <-p.js.PublishAsyncComplete():
	case <-time.After(60 * time.Second):
		fail(fmt.Errorf("%d publishes never acknowledged", p.js.PublishAsyncPending()))
	}
	return p.nc.Flush()
}

// rawPublisher speaks core NATS itself, as hpfeeds bench's framePublisher
// speaks hpfeeds: one PUB built once, the payload's header patched in,
// written through a 64 KiB buffer that goes out when full or at Flush.
// nats.go's publisher put a different load on the wire: its Flush is a
// PING/PONG round trip, during which a paced publisher gathered twice as
// many messages per write as hpfeeds bench's (4.3 against 1.8 per read at
// 20,000 msg/s), and without it nats.go's flusher goroutine wrote about
// one message per write.
type rawPublisher struct {
	nc      net.Conn
	mu      sync.Mutex // the writer, shared with answering the server's PINGs
	w       *bufio.Writer
	frame   []byte
	at      int // where the payload starts in frame
	varying int // loadgen.Varying
}

// dialRaw connects a rawPublisher to the server at natsURL and returns
// once the server has accepted its CONNECT.
func dialRaw(natsURL, subject string, size int) *rawPublisher {
	u, err := url.Parse(natsURL)
	if err != nil {
		fail(err)
	}
	nc, err := net.Dial("tcp", u.Host)
	if err != nil {
		fail(err)
	}
	rd := bufio.NewReader(nc)
	if line, err := rd.ReadString('\n'); err != nil || !strings.HasPrefix(line, "INFO ") {
		fail(fmt.Errorf("%s: no INFO from the server (%q, %v)", natsURL, line, err))
	}
	// No echo: the publisher subscribes to nothing anyway; verbose off, so
	// the server sends no +OK per PUB.
	if _, err := fmt.Fprint(nc, "CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false,\"protocol\":1}\r\nPING\r\n"); err != nil {
		fail(err)
	}
	if line, err := rd.ReadString('\n'); err != nil || line != "PONG\r\n" {
		fail(fmt.Errorf("%s: CONNECT refused (%q, %v)", natsURL, line, err))
	}
	head := fmt.Sprintf("PUB %s %d\r\n", subject, size)
	p := &rawPublisher{nc: nc, w: bufio.NewWriterSize(nc, 64<<10), at: len(head), varying: loadgen.Varying(size)}
	p.frame = append(append([]byte(head), make([]byte, size)...), "\r\n"...)
	go p.answer(rd)
	return p
}

// answer replies to the server's PINGs, which would otherwise close the
// connection, and fails the run on an -ERR.
func (p *rawPublisher) answer(rd *bufio.Reader) {
	for {
		line, err := rd.ReadString('\n')
		if err != nil {
			return // closed as the program ends
		}
		switch {
		case line == "PING\r\n":
			p.mu.Lock()
			p.w.WriteString("PONG\r\n")
			p.w.Flush()
			p.mu.Unlock()
		case strings.HasPrefix(line, "-ERR"):
			fail(fmt.Errorf("server: %s", strings.TrimSpace(line)))
		}
	}
}

func (p *rawPublisher) Send(payload []byte) error {
	p.mu.Lock()
	copy(p.frame[p.at:], payload[:p.varying])
	_, err := p.w.Write(p.frame)
	p.mu.Unlock()
	return err
}

func (p *rawPublisher) Flush() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.w.Flush()
}

func (p *rawPublisher) Done() error { return p.Flush() }

func fail(err error) {
	fmt.Fprintln(os.Stderr, "natsbench:", err)
	os.Exit(2)
}
