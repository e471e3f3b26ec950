package broker

// HoldChannelLock takes channel's write lock, as a subscribe or unsubscribe
// there does, until release is called: a test can so check that something
// never waits on it.
func HoldChannelLock(b *Broker, channel string) (release func()) {
	t := b.topic([]byte(channel), true)
	t.mu.Lock()
	return t.mu.Unlock
}
