package broker

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// Queued frames of a few KiB up to fanOutMax (a fan-out's runs, a frame a
// queue holds alone) and the chunks a queue copies small frames into are
// made and let go of at the rate frames are read. On the collector's heap
// they kept the collector, the scavenger and page faults busy (a quarter
// of the broker's CPU in fan-out to ten subscribers, docs/performance.md),
// and, recycled there, the heap they grew stayed resident long after a
// burst, as the collector then rarely ran. So they live outside the heap:
// whole pages mapped for them (mapBuf), put on a free list when the last
// queue lets go, and unmapped when they have sat on it unused for a trim
// interval (trimBufs, every bufTrim from Broker.background; one process
// has one set of lists, which each broker in it trims): a burst's memory
// goes back to the system within two intervals, and a steady load maps
// nothing. Frames larger than fanOutMax, up to heldMax, have buffers of
// their own too: on the heap each such frame was a large allocation the
// collector swept and the scavenger handed back, which with page faults
// took a third of the broker's CPU on 1 MiB frames. Frames under heldMin
// stay on the heap, where the allocator's size classes fit them better
// than a page would, as do frames over heldMax.
const (
	heldMin  = 2 << 10
	heldMax  = 16 << 20
	pageSize = 4096 // where the system's pages are larger, it rounds a mapping up
	bufTrim  = 2 * time.Second
)

// bufSizes are the buffers' sizes in bytes: whole pages, at most a quarter
// more than a frame and its header need from two pages on, up to
// fanOutMax and its header (scratchSize is one of them, chunkClass); then,
// from largeClass on, a page of headroom (see pageAlignFrom) and eight
// sizes per doubling up to heldMax, at most an eighth more than a frame.
var bufSizes = func() (sizes []int) {
	for _, pages := range []int{1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16} {
		sizes = append(sizes, pages*pageSize)
	}
	sizes = append(sizes, fanOutMax+pageSize)
	for base := fanOutMax; base < heldMax; base *= 2 {
		for eighths := 9; eighths <= 16; eighths++ {
			sizes = append(sizes, pageSize+base*eighths/8)
		}
	}
	return sizes
}()

// largeClass is the first class of frames over fanOutMax, which start a
// page into their buffer; the others start frameHeader into it.
var largeClass = slices.Index(bufSizes, fanOutMax+pageSize) + 1

// chunkClass is the class of a queue's chunk (copyLocked).
var chunkClass, _ = slices.BinarySearch(bufSizes, scratchSize)

// A bufList is one class's free buffers.
type bufList struct {
	mu   sync.Mutex
	free []unsafe.Pointer
	low  int // the fewest buffers free since the last trim
}

var (
	bufLists     = make([]bufList, len(bufSizes))
	bufFreeBytes atomic.Int64 // on the lists
	bufMapped    atomic.Int64 // mapped in all, on the lists or in use
)

// bufsInUse is how many bytes of mapped buffers hold frames.
func bufsInUse() int64 { return bufMapped.Load() - bufFreeBytes.Load() }

// takeBuf is a buffer of class k, from its list or newly mapped; nil if
// none could be mapped.
func takeBuf(k int) unsafe.Pointer {
	l := &bufLists[k]
	l.mu.Lock()
	if n := len(l.free) - 1; n >= 0 {
		p := l.free[n]
		l.free[n] = nil
		l.free = l.free[:n]
		l.low = min(l.low, n)
		l.mu.Unlock()
		bufFreeBytes.Add(-int64(bufSizes[k]))
		return p
	}
	l.low = 0
	l.mu.Unlock()
	p := mapBuf(bufSizes[k])
	if p != nil {
		bufMapped.Add(int64(bufSizes[k]))
	}
	return p
}

// putBuf puts a buffer of takeBuf's back on its list; nothing may use it
// after. Tests clear it first (poisonBufs).
func putBuf(p unsafe.Pointer, k int) {
	if poisonBufs {
		clear(unsafe.Slice((*byte)(p), bufSizes[k]))
	}
	l := &bufLists[k]
	l.mu.Lock()
	l.free = append(l.free, p)
	l.mu.Unlock()
	bufFreeBytes.Add(int64(bufSizes[k]))
}

// trimBufs unmaps the buffers that stayed on their list since the last
// trim: the oldest ones, as many as the list never went below.
func trimBufs() {
	for k := range bufLists {
		l := &bufLists[k]
		l.mu.Lock()
		idle := slices.Clone(l.free[:l.low])
		n := copy(l.free, l.free[l.low:])
		clear(l.free[n:])
		l.free = l.free[:n]
		l.low = n
		l.mu.Unlock()
		for _, p := range idle {
			unmapBuf(p, bufSizes[k])
		}
		bufFreeBytes.Add(-int64(len(idle) * bufSizes[k]))
		bufMapped.Add(-int64(len(idle) * bufSizes[k]))
	}
}

// poisonBufs makes putBuf clear a buffer before it is reused, so that a
// frame still used after its last holder let go shows in tests.
var poisonBufs = false

// heldClass is the class a held frame of n bytes is carved from, -1 for
// none (the heap).
func heldClass(n int) int {
	if n < heldMin || n > heldMax {
		return -1
	}
	if n > fanOutMax {
		k, _ := slices.BinarySearch(bufSizes[largeClass:], pageSize+n)
		return largeClass + k
	}
	k, _ := slices.BinarySearch(bufSizes, frameHeader+n)
	return k
}

// frameOffset is where a held frame starts in a buffer of class k.
func frameOffset(k int) int {
	if k >= largeClass {
		return pageSize
	}
	return frameHeader
}

// heldSize is what a held frame counts in the budget: its buffer's size
// when it has one of its own, else its length.
func heldSize(frame []byte) int {
	if k := holdOf(frame).class; k != 0 {
		return bufSizes[k-1]
	}
	return len(frame)
}

// recycle gives a held frame's buffer back once no queue holds it.
func recycle(frame []byte) {
	if k := int(holdOf(frame).class) - 1; k >= 0 {
		putBuf(unsafe.Add(unsafe.Pointer(unsafe.SliceData(frame)), -frameOffset(k)), k)
	}
}
