package broker

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
