package broker

import (
	"testing"
	"time"
)

// The pacer books each batch's share of the rate after the one before,
// whoever sends it; it may run up to catchUpSlack behind its schedule and
// catch up, and saves up no more unused time than that.
func TestRetainCatchUpPacer(t *testing.T) {
	var p pacer
	t0 := time.Unix(1000, 0)
	const rate = 80e6      // bytes a second: a millisecond is a whole number of bytes
	ms := int(rate / 1000) // a millisecond's bytes
	slack := int(catchUpSlack / time.Millisecond)
	if d := p.reserve(t0, (slack+2)*ms, rate); d != 0 {
		t.Fatalf("the first batch waits %v, want 0", d)
	}
	if d := p.reserve(t0, ms, rate); d != 2*time.Millisecond {
		t.Fatalf("the second batch waits %v, want 2ms (the first ends 2ms past the slack)", d)
	}
	if d := p.reserve(t0.Add(time.Millisecond), ms, rate); d != 2*time.Millisecond {
		t.Fatalf("a third batch 1ms later waits %v, want 2ms (the two before end 3ms past the slack)", d)
	}
	if d := p.reserve(t0.Add(time.Second), (slack+100)*ms, rate); d != 0 {
		t.Fatalf("a batch after an idle second waits %v, want 0", d)
	}
	if d := p.reserve(t0.Add(time.Second), ms, rate); d != 100*time.Millisecond {
		t.Fatalf("the next waits %v, want 100ms: only the slack of the idle second was saved up", d)
	}
	if d := p.reserve(t0.Add(time.Second), 100*ms, 0); d != 0 {
		t.Fatalf("unpaced (rate 0), a batch waits %v, want 0", d)
	}
}
