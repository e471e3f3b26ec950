//go:build !linux

package broker

// Off Linux the kernel is not asked: the last 4 MiB written are assumed
// unacknowledged (see retain_linux.go), a few more frames sent twice.
func dupSocket(*conn) int { return -1 }

func closeSocket(int) {}

func ackedOffset(c *conn, _ int, _ int64) int64 {
	return max(0, int64(c.stats.sentBytes.Load())-4<<20)
}
