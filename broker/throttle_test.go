package broker

import (
	"net/netip"
	"testing"
	"time"
)

// A source is an IPv4 address or an IPv6 /64: one IPv6 host can take a
// fresh address for every guess from its /64, and must still count as one.
func TestThrottleSource(t *testing.T) {
	th := throttle{cfg: ThrottleConfig{After: 2, Window: time.Minute, MaxDelay: time.Second}}
	now := time.Now()
	var delays []time.Duration
	for i := range 5 {
		ip := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i + 1)}) // 2001:db8::1 … ::5
		d, _ := th.failed(ip, now)
		delays = append(delays, d)
	}
	want := []time.Duration{0, 0, 100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond}
	for i := range want {
		if delays[i] != want[i] {
			t.Fatalf("delays %v across one /64, want %v", delays, want)
		}
	}
	if d, _ := th.failed(netip.MustParseAddr("2001:db8:0:1::1"), now); d != 0 {
		t.Errorf("another /64 was delayed %v", d)
	}
	if d, _ := th.failed(netip.MustParseAddr("192.0.2.1"), now); d != 0 {
		t.Errorf("an IPv4 address was delayed %v", d)
	}
	if st := th.stats(now); st.Delayed != 3 || st.Sources != 1 {
		t.Errorf("stats %+v, want 3 delayed from 1 source", st)
	}
	if d, _ := th.failed(netip.MustParseAddr("2001:db8::9"), now.Add(2*time.Minute)); d != 0 {
		t.Errorf("a failure after a quiet window was delayed %v", d)
	}
}
