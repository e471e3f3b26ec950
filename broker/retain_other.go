//go:build !linux

package broker

// ackedOffset assumes, off Linux, that the last 4 MiB written were not
// acknowledged (see retain_linux.go): a few more frames sent twice.
func ackedOffset(c *conn, info int64) int64 {
	return max(0, int64(c.stats.sentBytes.Load())-4<<20)
}
