package loadgen

import (
	"math"
	"sync"
	"testing"
	"time"
)

func TestQuantilesWithinSixPercent(t *testing.T) {
	var l Latencies
	for us := uint64(1); us <= 100000; us++ {
		l.Add(us)
	}
	for _, q := range []float64{0.5, 0.9, 0.99} {
		want := q * 100000
		if got := l.Quantile(q); math.Abs(got-want) > 0.0625*want {
			t.Errorf("p%v = %v, want %v within 6%%", q*100, got, want)
		}
	}
	if l.Max() != 100000 {
		t.Errorf("max %d", l.Max())
	}
}

// loopback delivers each payload to every sink at once, dropping every
// dropEvery-th one (0: none).
type loopback struct {
	mu        *sync.Mutex
	sinks     []*Sink
	sent      int
	dropEvery int
}

func (p *loopback) Send(payload []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sent++
	if p.dropEvery > 0 && p.sent%p.dropEvery == 0 {
		return nil
	}
	for _, s := range p.sinks {
		s.Record(payload)
	}
	return nil
}
func (p *loopback) Flush() error { return nil }
func (p *loopback) Done() error  { return nil }

func TestRunCountsDeliveriesAndLosses(t *testing.T) {
	for _, drop := range []int{0, 10} {
		sinks := []*Sink{{}, {}, {}}
		mu := &sync.Mutex{}
		pubs := []Publisher{&loopback{mu: mu, sinks: sinks, dropEvery: drop}, &loopback{mu: mu, sinks: sinks, dropEvery: drop}}
		cfg := Config{Publishers: 2, Subscribers: 3, Size: 64, Count: 1000, Window: 5000, FrameBytes: 80, Drain: 50 * time.Millisecond}
		r := Run(cfg, pubs, sinks, nil)
		wantLost := int64(0)
		if drop > 0 {
			wantLost = 2 * 1000 / int64(drop) * 3
		}
		if r.Published != 2000 || r.Expected != 6000 || r.Lost != wantLost || r.Delivered != 6000-wantLost {
			t.Errorf("drop every %d: %+v", drop, r)
		}
	}
}

// Losses larger than the window end the run with the loss reported: the
// window never closes again, and publishers used to wait on it forever.
func TestLossPastTheWindowEndsTheRun(t *testing.T) {
	sinks := []*Sink{{}}
	pub := &loopback{mu: &sync.Mutex{}, sinks: sinks, dropEvery: 2}
	cfg := Config{Publishers: 1, Subscribers: 1, Size: 64, Count: 10000, Window: 100, FrameBytes: 80, Drain: 50 * time.Millisecond}
	done := make(chan *Result, 1)
	go func() { done <- Run(cfg, []Publisher{pub}, sinks, nil) }()
	select {
	case r := <-done:
		if r.Lost == 0 || r.Published >= 10000 {
			t.Errorf("%+v: want the run cut short with the loss counted", r)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the run still waits on a window losses keep open")
	}
}

// A sink counts its own run's payloads only: runs may share a channel.
func TestSinkCountsItsRunOnly(t *testing.T) {
	mine, other := NewRunID(), NewRunID()
	s := NewSink(mine)
	for _, id := range []RunID{mine, other, mine} {
		p := make([]byte, MinSize)
		p[0] = MarkBench
		copy(p[1:9], id[:])
		s.Record(p)
	}
	if n := s.got.Load(); n != 2 {
		t.Errorf("counted %d, want 2", n)
	}
}

// calls records a publisher's calls: S(end), F(lush), D(one).
type calls struct{ seq []byte }

func (c *calls) Send([]byte) error { c.seq = append(c.seq, 'S'); return nil }
func (c *calls) Flush() error      { c.seq = append(c.seq, 'F'); return nil }
func (c *calls) Done() error       { c.seq = append(c.seq, 'D'); return nil }

// A paced run ends at its deadline, and writes each message as it is
// sent rather than holding any until a sleep or the deadline.
func TestPacedRunEndsAtItsDeadline(t *testing.T) {
	p := &calls{}
	cfg := Config{Publishers: 1, Size: MinSize, Rate: 4, Duration: 600 * time.Millisecond, FrameBytes: 32}
	r := Run(cfg, []Publisher{p}, nil, nil)
	if r.Published != 3 || string(p.seq) != "SFSFSFD" {
		t.Errorf("published %d, calls %s: want 3 sends (at 0, 250 and 500 ms), each flushed, then Done", r.Published, p.seq)
	}
}
