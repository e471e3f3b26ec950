package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/hpfeeds-go/hpfeeds/internal/loadgen"
	"github.com/hpfeeds-go/hpfeeds/wire"
)

type benchOpts struct {
	loadgen.Config
	json    bool
	subPort int
}

func newBenchCmd(f *connFlags) *cobra.Command {
	o := &benchOpts{}
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Load the broker and report throughput, latency and losses",
		Long: `Load the broker: publishers send timestamped payloads to one channel
(-c, default "bench"), subscribers count and time them. Every subscriber
must get every message; any shortfall is printed and the exit status is 1.
The ident needs permission to publish and subscribe on the channel.`,
		Example: `  hpfeeds bench -i bench -s secret --publishers 1 --subscribers 10 --size 256 --count 1000000
  hpfeeds bench -i bench -s secret --subscribers 10 --rate 20000 --duration 10s --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			res, err := bench(cmd.Context(), f, o, cmd.OutOrStdout())
			if err != nil {
				return err
			}
			if o.json {
				json.NewEncoder(cmd.OutOrStdout()).Encode(res)
			} else {
				printResult(cmd.OutOrStdout(), res)
			}
			if res.Lost != 0 {
				return fmt.Errorf("%d of %d deliveries lost", res.Lost, res.Expected)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	load := flag.NewFlagSet("bench", flag.ContinueOnError)
	o.Config.AddFlags(load)
	fl.AddGoFlagSet(load)
	fl.BoolVar(&o.json, "json", false, "print the result as one JSON object")
	fl.IntVar(&o.subPort, "sub-port", 0, "connect subscribers to this `PORT` of --host instead (another broker of a cluster)")
	return cmd
}

// dialRaw connects, reads INFO and sends what frames makes of its nonce.
func dialRaw(ctx context.Context, f *connFlags, frames func(nonce []byte) []byte) (net.Conn, *wire.Reader, error) {
	cfg, err := f.config(os.Stderr)
	if err != nil {
		return nil, nil, err
	}
	d := net.Dialer{Timeout: 10 * time.Second}
	var nc net.Conn
	if cfg.TLS != nil {
		nc, err = (&tls.Dialer{NetDialer: &d, Config: cfg.TLS}).DialContext(ctx, "tcp", cfg.Addr)
	} else {
		nc, err = d.DialContext(ctx, "tcp", cfg.Addr)
	}
	if err != nil {
		return nil, nil, explain(cfg, err)
	}
	rd := wire.NewReader(nc, wire.UniformLimits(wire.MaxFrameLen))
	wait := 10 * time.Second
	if cfg.InfoTimeout > 0 {
		wait = cfg.InfoTimeout
	}
	nc.SetReadDeadline(time.Now().Add(wait))
	info, err := rd.Next()
	nc.SetReadDeadline(time.Time{})
	if err == nil && info.Op != wire.OpInfo {
		err = fmt.Errorf("the first frame is %v", info.Op)
	}
	if err != nil {
		nc.Close()
		return nil, nil, explain(cfg, fmt.Errorf("no INFO from %s: %w", cfg.Addr, err))
	}
	if _, err := nc.Write(frames(info.Payload)); err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, rd, nil
}

// benchRun is one `hpfeeds bench`: its connections and what they report.
type benchRun struct {
	f       *connFlags
	o       *benchOpts
	ident   []byte
	channel []byte
	conns   []net.Conn
	subs    []*subscriber

	mu     sync.Mutex
	pubErr error // a publisher's refusal
}

// subscriber reads one subscribing connection.
type subscriber struct {
	*loadgen.Sink
	probe, linkProbe []byte
	linked           atomic.Bool // has heard the first publisher's probe
	err              error
}

func bench(ctx context.Context, f *connFlags, o *benchOpts, out io.Writer) (*loadgen.Result, error) {
	if o.Size < loadgen.MinSize {
		return nil, fmt.Errorf("--size must be at least %d", loadgen.MinSize)
	}
	if o.Publishers < 1 || o.Subscribers < 0 {
		return nil, errors.New("need at least one publisher")
	}
	channel := "bench"
	if len(f.channels) > 0 {
		channel = f.channels[0]
	}
	// Other runs may share the channel: the ID tells this run's messages.
	o.Run = loadgen.NewRunID()
	r := &benchRun{f: f, o: o, ident: []byte(f.ident), channel: []byte(channel)}
	defer func() {
		for _, c := range r.conns {
			c.Close()
		}
	}()
	if err := r.subscribe(ctx); err != nil {
		return nil, err
	}
	pubs, err := r.publishers(ctx)
	if err != nil {
		return nil, err
	}
	cfg := o.Config
	frame, _ := wire.AppendPublish(nil, r.ident, r.channel, make([]byte, o.Size))
	cfg.FrameBytes = len(frame)
	sinks := make([]*loadgen.Sink, len(r.subs))
	for i, s := range r.subs {
		sinks[i] = s.Sink
	}
	res := loadgen.Run(cfg, pubs, sinks, out)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pubErr != nil {
		return nil, r.pubErr
	}
	return res, nil
}

// subscribe connects the subscribers. Each subscribes, then publishes a
// probe and waits for it to come back, which proves its subscription is in
// place.
func (r *benchRun) subscribe(ctx context.Context) error {
	var ready sync.WaitGroup
	for i := range r.o.Subscribers {
		s := &subscriber{Sink: loadgen.NewSink(r.o.Run), probe: r.o.Run.Probe(strconv.Itoa(i)), linkProbe: r.o.Run.Probe("pub")}
		sf := *r.f
		if r.o.subPort != 0 {
			sf.port = r.o.subPort
		}
		nc, rd, err := dialRaw(ctx, &sf, func(nonce []byte) []byte {
			b, _ := wire.AppendAuth(nil, nonce, r.f.ident, r.f.secret)
			b, _ = wire.AppendSubscribe(b, r.ident, r.channel)
			b, _ = wire.AppendPublish(b, r.ident, r.channel, s.probe)
			return b
		})
		if err != nil {
			return fmt.Errorf("subscriber %d: %w", i, err)
		}
		r.conns = append(r.conns, nc)
		r.subs = append(r.subs, s)
		ready.Add(1)
		go s.read(rd, ready.Done)
	}
	ready.Wait()
	for i, s := range r.subs {
		if s.err != nil {
			return fmt.Errorf("subscriber %d: %w", i, s.err)
		}
	}
	return nil
}

// read records what the subscriber receives; ready is called once its own
// probe is back, or it failed.
func (s *subscriber) read(rd *wire.Reader, ready func()) {
	once := sync.OnceFunc(ready)
	defer once()
	for {
		fr, err := rd.Next()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.err = err
			}
			return
		}
		if fr.Op == wire.OpError {
			s.err = fmt.Errorf("broker: %s", fr.Payload)
			return
		}
		if fr.Op != wire.OpPublish || len(fr.Payload) == 0 {
			continue
		}
		switch fr.Payload[0] {
		case loadgen.MarkReady:
			if string(fr.Payload) == string(s.probe) {
				once()
			}
			if string(fr.Payload) == string(s.linkProbe) {
				s.linked.Store(true)
			}
		case loadgen.MarkBench:
			s.Record(fr.Payload)
		}
	}
}

// publishers connects the publishers. The first probes until every
// subscriber hears it: across a cluster, interest reaches the publisher's
// broker some time after the subscriber's SUBSCRIBE.
func (r *benchRun) publishers(ctx context.Context) ([]loadgen.Publisher, error) {
	var pubs []loadgen.Publisher
	for p := range r.o.Publishers {
		nc, rd, err := dialRaw(ctx, r.f, func(nonce []byte) []byte {
			b, _ := wire.AppendAuth(nil, nonce, r.f.ident, r.f.secret)
			return b
		})
		if err != nil {
			return nil, fmt.Errorf("publisher %d: %w", p, err)
		}
		r.conns = append(r.conns, nc)
		if p == 0 {
			if err := r.link(nc); err != nil {
				return nil, err
			}
		}
		go r.watchRefusal(nc, rd)
		pubs = append(pubs, newFramePublisher(nc, r.ident, r.channel, r.o.Size))
	}
	return pubs, nil
}

func (r *benchRun) link(nc net.Conn) error {
	probe, _ := wire.AppendPublish(nil, r.ident, r.channel, r.o.Run.Probe("pub"))
	for range 500 {
		all := true
		for _, s := range r.subs {
			all = all && s.linked.Load()
		}
		if all {
			return nil
		}
		nc.Write(probe)
		time.Sleep(20 * time.Millisecond)
	}
	return errors.New("subscribers never heard the publisher")
}

// watchRefusal notes a publisher's refusal, which arrives as an ERROR.
func (r *benchRun) watchRefusal(nc net.Conn, rd *wire.Reader) {
	if fr, err := rd.Next(); err == nil && fr.Op == wire.OpError {
		r.mu.Lock()
		r.pubErr = fmt.Errorf("broker: %s", fr.Payload)
		r.mu.Unlock()
		nc.Close()
	}
}

// framePublisher writes one PUBLISH frame, built once, with the part of
// each payload that varies patched in.
type framePublisher struct {
	w       *bufio.Writer
	frame   []byte
	at      int // where the payload starts in frame
	varying int // loadgen.Varying
}

func newFramePublisher(nc net.Conn, ident, channel []byte, size int) *framePublisher {
	frame, _ := wire.AppendPublish(nil, ident, channel, make([]byte, size))
	return &framePublisher{w: bufio.NewWriterSize(nc, 64<<10), frame: frame, at: len(frame) - size, varying: loadgen.Varying(size)}
}

func (p *framePublisher) Send(payload []byte) error {
	copy(p.frame[p.at:], payload[:p.varying])
	_, err := p.w.Write(p.frame)
	return err
}

func (p *framePublisher) Flush() error { return p.w.Flush() }
func (p *framePublisher) Done() error  { return p.w.Flush() }

func printResult(w io.Writer, r *loadgen.Result) {
	fmt.Fprintf(w, "publishers %d, subscribers %d, payload %d B, %.2f s\n", r.Publishers, r.Subscribers, r.PayloadBytes, r.Seconds)
	fmt.Fprintf(w, "published  %d (%.0f msg/s)\n", r.Published, r.PublishedPS)
	fmt.Fprintf(w, "delivered  %d of %d (%.0f msg/s, %.1f MB/s)\n", r.Delivered, r.Expected, r.DeliveredPS, r.MBPS)
	fmt.Fprintf(w, "latency    p50 %.0f µs, p99 %.0f µs, max %.0f µs\n", r.P50us, r.P99us, r.Maxus)
	if r.Lost != 0 {
		fmt.Fprintf(w, "LOST       %d deliveries\n", r.Lost)
	}
}
