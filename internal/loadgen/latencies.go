package loadgen

import (
	"math"
	"math/bits"
)

// Latencies is a log-linear histogram of microseconds: 16 sub-buckets per
// power of two, so percentiles are within about 6%.
type Latencies struct {
	counts [64 * 16]uint64
	max    uint64
}

// Add counts one latency.
func (l *Latencies) Add(us uint64) {
	l.counts[bucket(us)]++
	l.max = max(l.max, us)
}

func bucket(us uint64) int {
	if us < 16 {
		return int(us)
	}
	e := bits.Len64(us) - 5 // us has e+5 bits: keep the top 5
	return (e+1)*16 + int(us>>e) - 16
}

func bucketValue(i int) float64 {
	if i < 16 {
		return float64(i)
	}
	return float64(uint64(i%16+16) << (i/16 - 1))
}

// Merge adds o's counts to l.
func (l *Latencies) Merge(o *Latencies) {
	for i, c := range o.counts {
		l.counts[i] += c
	}
	l.max = max(l.max, o.max)
}

// Max is the largest latency added.
func (l *Latencies) Max() uint64 { return l.max }

// Quantile returns the latency under which a fraction q of them fall.
func (l *Latencies) Quantile(q float64) float64 {
	var total uint64
	for _, c := range l.counts {
		total += c
	}
	if total == 0 {
		return 0
	}
	want, seen := uint64(math.Ceil(q*float64(total))), uint64(0)
	for i, c := range l.counts {
		if seen += c; seen >= want {
			return min(bucketValue(i), float64(l.max))
		}
	}
	return float64(l.max)
}
