package main

import (
	"io"
	"net"
	"syscall"
	"time"
	"unsafe"
)

// stampedConn reads a TCP connection with recvmsg and keeps the kernel's
// receive time of the last segment each read took (SO_TIMESTAMPNS): the
// live subscriber's latency splits into the time to reach its socket (the
// broker and loopback) and the time this process took to read it.
type stampedConn struct {
	raw  syscall.RawConn
	oob  []byte
	last time.Time // the receive time of the newest bytes read
}

func newStampedConn(nc net.Conn) (*stampedConn, error) {
	raw, err := nc.(*net.TCPConn).SyscallConn()
	if err != nil {
		return nil, err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_TIMESTAMPNS, 1)
	}); err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, serr
	}
	return &stampedConn{raw: raw, oob: make([]byte, syscall.CmsgSpace(16))}, nil
}

func (s *stampedConn) Read(p []byte) (int, error) {
	var n, oobn int
	var rerr error
	err := s.raw.Read(func(fd uintptr) bool {
		n, oobn, _, _, rerr = syscall.Recvmsg(int(fd), p, s.oob, 0)
		return rerr != syscall.EAGAIN
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, io.EOF
	}
	if msgs, perr := syscall.ParseSocketControlMessage(s.oob[:oobn]); perr == nil {
		for _, m := range msgs {
			if m.Header.Level == syscall.SOL_SOCKET && m.Header.Type == syscall.SO_TIMESTAMPNS && len(m.Data) >= 16 {
				ts := (*syscall.Timespec)(unsafe.Pointer(&m.Data[0]))
				s.last = time.Unix(ts.Unix())
			}
		}
	}
	return n, nil
}
