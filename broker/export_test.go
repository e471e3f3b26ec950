package broker

import "time"

// RevalidateIdents runs one revalidation round over idents as if each had
// a live session, without the sockets, spread over spread, and returns how
// long it took and the ident whose lookup failed, if one did: what a round costs the store at sizes a test machine
// cannot hold connections for.
func RevalidateIdents(b *Broker, idents []string, spread time.Duration) (time.Duration, string) {
	byIdent := make(map[string][]*conn, len(idents))
	for _, id := range idents {
		byIdent[id] = nil
	}
	start := time.Now()
	failed := b.revalidateRound(byIdent, spread, "")
	return time.Since(start), failed
}

// BudgetParts is the memory budget's total, the part of it in reader
// buffers, the part closed subscribers' blocked writes still hold, and the
// reader buffers its connections say they hold, summed.
func BudgetParts(b *Broker) (used, buffered, releasing, connBuffers int64) {
	b.mu.Lock()
	for c := range b.conns {
		connBuffers += c.buffered.Load()
	}
	b.mu.Unlock()
	return b.mem.used.Load(), b.mem.buffered.Load(), b.mem.releasing.Load(), connBuffers
}

// Every test of the package runs with recycled frame buffers cleared, so
// that a frame used after its last holder let go reads as zeros.
func init() { poisonBufs = true }

// BufsInUse is how many bytes of mapped buffers hold frames (bufs.go).
func BufsInUse() int64 { return bufsInUse() }
