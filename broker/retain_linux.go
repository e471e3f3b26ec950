package broker

import (
	"crypto/tls"
	"net"

	"golang.org/x/sys/unix"
)

// unackedGuess is what a socket is assumed to hold unacknowledged when the
// kernel cannot say: Linux's largest default send buffer (tcp_wmem).
const unackedGuess = 4 << 20

// ackedOffset is how many of the bytes pushed to c's queue the peer's TCP
// acknowledged, read from the socket as the connection ends. On plain TCP
// it is TCP_INFO's bytes_acked less the INFO frame: unlike SIOCOUTQ, which
// reads 0 once the peer's kernel answered with a reset (a killed client
// with unread data does), it survives the reset. Over TLS the socket
// carries records, so it is the bytes written less SIOCOUTQ (each
// unacknowledged record byte carries at most one queue byte). Where the
// kernel cannot say, unackedGuess is assumed in flight.
func ackedOffset(c *conn, info int64) int64 {
	sent := int64(c.stats.sentBytes.Load())
	guess := max(0, sent-unackedGuess)
	nc, isTLS := c.nc, false
	if tc, ok := nc.(*tls.Conn); ok {
		nc, isTLS = tc.NetConn(), true
	}
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		return guess
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return guess
	}
	var ti *unix.TCPInfo
	var outq int
	var terr, qerr error
	if err := rc.Control(func(fd uintptr) {
		ti, terr = unix.GetsockoptTCPInfo(int(fd), unix.SOL_TCP, unix.TCP_INFO)
		outq, qerr = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ)
	}); err != nil || terr != nil {
		return guess
	}
	if !isTLS {
		return max(0, int64(ti.Bytes_acked)-info)
	}
	if qerr != nil || ti.State != unix.BPF_TCP_ESTABLISHED && ti.State != unix.BPF_TCP_CLOSE_WAIT {
		return guess
	}
	return max(0, sent-int64(outq))
}
