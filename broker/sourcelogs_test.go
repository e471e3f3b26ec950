package broker

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// A source's first sessionLogBurst lines of a kind in a minute are due, the
// rest counted; the sweep takes the count once the minute is over, and
// forgets the source once nothing of it is pending.
func TestSourceLogsBurstAndSweep(t *testing.T) {
	var s sourceLogs
	ip := netip.MustParseAddr("2001:db8::1")
	other := netip.MustParseAddr("2001:db8::2") // the same /64
	t0 := time.Now()
	logged := 0
	for i := range 50 {
		src, l := s.of([]netip.Addr{ip, other}[i%2])
		if src != netip.MustParsePrefix("2001:db8::/64") {
			t.Fatalf("source %v", src)
		}
		if _, ok := l.due("login", t0.Add(time.Duration(i)*time.Second)); ok {
			logged++
		}
	}
	if logged != sessionLogBurst {
		t.Errorf("%d lines due, want %d", logged, sessionLogBurst)
	}
	if got := s.sweep(t0.Add(50*time.Second), false); len(got) != 0 {
		t.Errorf("summary %v within the minute", got)
	}
	got := s.sweep(t0.Add(sessionLogEvery), false)
	if len(got) != 1 || got[0].n != 50-sessionLogBurst || got[0].kind != "login" || !got[0].since.Equal(t0) {
		t.Errorf("summary %+v, want %d login lines left out since %v", got, 50-sessionLogBurst, t0)
	}
	if len(s.sources) != 0 {
		t.Errorf("%d sources remembered after a quiet minute", len(s.sources))
	}
	if got := s.sweep(t0.Add(2*sessionLogEvery), true); len(got) != 0 {
		t.Errorf("summary %v counted twice", got)
	}
}

// Past maxLogSources, new sources share one budget: memory and lines stay
// bounded whatever the number of addresses.
func TestSourceLogsBounded(t *testing.T) {
	var s sourceLogs
	now := time.Now()
	due := 0
	for i := range maxLogSources + 100 {
		ip := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		_, l := s.of(ip)
		if _, ok := l.due("login", now); ok {
			due++
		}
	}
	if len(s.sources) != maxLogSources+1 || due != maxLogSources+sessionLogBurst {
		t.Errorf("%d sources, %d lines due; want %d and %d", len(s.sources), due, maxLogSources+1, maxLogSources+sessionLogBurst)
	}
	src, _ := s.of(netip.MustParseAddr("192.0.2.1"))
	if src.IsValid() {
		t.Errorf("a new source past the bound got its own budget (%v)", src)
	}
}

// The quietLog every other line uses keeps its behaviour: one line, then at
// most one every quietLogEvery with the count since.
func TestQuietLogDefault(t *testing.T) {
	var q quietLog
	t0 := time.Now()
	for i, c := range []struct {
		at   time.Duration
		n    uint64
		want bool
	}{{0, 1, true}, {time.Second, 0, false}, {2 * time.Second, 0, false}, {quietLogEvery, 3, true}, {quietLogEvery + 1, 0, false}} {
		if n, ok := q.due(t0.Add(c.at)); n != c.n || ok != c.want {
			t.Errorf("event %d: due = %d, %v; want %d, %v", i, n, ok, c.n, c.want)
		}
	}
}

func TestClip(t *testing.T) {
	for _, c := range []struct {
		in   string
		max  int
		want string
	}{
		{"short", 5, "short"},
		{"longer", 4, "long…(+2 bytes)"},
		{"aéb", 2, "a…(+3 bytes)"}, // é is not split
		{strings.Repeat("€", 3), 7, "€€…(+3 bytes)"},
		{"\xff\xff\xff\xff\xff\xff", 5, "\xff\xff\xff\xff\xff…(+1 bytes)"},
	} {
		if got := Clip(c.in, c.max); got != c.want {
			t.Errorf("Clip(%q, %d) = %q, want %q", c.in, c.max, got, c.want)
		}
	}
}
