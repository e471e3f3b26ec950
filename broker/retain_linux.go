package broker

import (
	"crypto/tls"
	"net"

	"golang.org/x/sys/unix"
)

// unackedGuess is what a socket is assumed to hold unacknowledged when the
// kernel cannot say: Linux's largest default send buffer (tcp_wmem).
const unackedGuess = 4 << 20

// dupSocket duplicates c's TCP socket, or returns -1.
func dupSocket(c *conn) int {
	nc := c.nc
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		return -1
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return -1
	}
	fd := -1
	rc.Control(func(s uintptr) {
		if d, err := unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0); err == nil {
			fd = d
		}
	})
	return fd
}

func closeSocket(fd int) {
	if fd >= 0 {
		unix.Close(fd)
	}
}

// ackedOffset is how many of the bytes pushed to c's queue the peer's TCP
// acknowledged, read from sock (dupSocket's) as the connection ends. On
// plain TCP it is TCP_INFO's bytes_acked less the INFO frame: unlike
// SIOCOUTQ, which reads 0 once the peer's kernel answered with a reset (a
// killed client with unread data does), it survives the reset. Over TLS
// the socket carries records, so it is the bytes written less SIOCOUTQ
// (each unacknowledged record byte carries at most one queue byte), while
// the connection is established. Where the kernel cannot say,
// unackedGuess is assumed in flight.
func ackedOffset(c *conn, sock int, info int64) int64 {
	sent := int64(c.stats.sentBytes.Load())
	guess := max(0, sent-unackedGuess)
	if sock < 0 {
		return guess
	}
	ti, err := unix.GetsockoptTCPInfo(sock, unix.SOL_TCP, unix.TCP_INFO)
	if err != nil {
		return guess
	}
	if _, isTLS := c.nc.(*tls.Conn); !isTLS {
		return max(0, int64(ti.Bytes_acked)-info)
	}
	outq, err := unix.IoctlGetInt(sock, unix.SIOCOUTQ)
	if err != nil || ti.State != unix.BPF_TCP_ESTABLISHED && ti.State != unix.BPF_TCP_CLOSE_WAIT {
		return guess
	}
	return max(0, sent-int64(outq))
}
