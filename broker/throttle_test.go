package broker

import (
	"context"
	"net/netip"
	"testing"
	"time"
)

// A source is an IPv4 address or an IPv6 /64: one IPv6 host can take a
// fresh address for every guess from its /64, and must still count as one.
func TestThrottleSource(t *testing.T) {
	th := throttle{cfg: ThrottleConfig{After: 2, Window: time.Minute, MaxDelay: time.Second}, ctx: context.Background()}
	now := time.Now()
	for i := range 3 {
		ip := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i + 1)}) // 2001:db8::1 … ::3
		th.admit(ip, "x", now)
		th.done(ip, false, now)
	}
	if st := th.stats(now); st.Delayed != 1 || st.Sources != 1 {
		t.Errorf("stats %+v, want 1 delayed from 1 source", st)
	}
	for _, ip := range []string{"2001:db8:0:1::1", "192.0.2.1"} {
		th.admit(netip.MustParseAddr(ip), "x", now)
		th.done(netip.MustParseAddr(ip), false, now)
	}
	if st := th.stats(now); st.Delayed != 1 {
		t.Errorf("another /64 or an IPv4 address waited: %+v", st)
	}
	th.admit(netip.MustParseAddr("2001:db8::9"), "x", now.Add(2*time.Minute))
	if st := th.stats(now); st.Delayed != 1 {
		t.Errorf("a login after a quiet window waited: %+v", st)
	}
}

// Past throttleWaiting, the ident with the most logins waiting gives way:
// a login for another ident always finds a place.
func TestLoginQueueFairness(t *testing.T) {
	var q loginQueue
	for range throttleWaiting {
		if w, _ := q.push("guessed"); w == nil {
			t.Fatal("a login was refused before the queue was full")
		}
	}
	if w, _ := q.push("guessed"); w != nil {
		t.Error("a login of the fullest ident was queued past the bound")
	}
	w, evicted := q.push("sensor")
	if w == nil || evicted == nil {
		t.Fatalf("a login of another ident was refused (%v) or took no place (%v)", w, evicted)
	}
	// Round-robin: the sensor's login is checked second, not seventeenth.
	if first := q.pop(); first == w {
		t.Fatal("the sensor was served before the earlier guess")
	}
	if second := q.pop(); second != w {
		t.Error("the sensor's login was not checked second")
	}
	if q.waiting != throttleWaiting-2 {
		t.Errorf("%d waiting, want %d", q.waiting, throttleWaiting-2)
	}
}
