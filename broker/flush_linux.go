//go:build linux

package broker

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// inlineFlush: publishers may write to a plain TCP subscriber themselves
// (sendQueue.flushInline).
const inlineFlush = true

// maxIovecs is Linux's IOV_MAX: a longer writev fails.
const maxIovecs = 1024

// nonBlockingWrite is one writev that never waits, made through the
// socket's RawConn with no allocation per write: its function value is
// made once, with its arguments and results kept beside it.
type nonBlockingWrite struct {
	iov []unix.Iovec
	n   int
	err error
	fn  func(fd uintptr) bool
}

// writeNow writes bufs with one writev that does not wait for room in the
// socket, and returns how much it took (0 where it would have waited).
func (q *sendQueue) writeNow(bufs [][]byte) (int64, error) {
	w := q.nbw
	if w == nil {
		w = &nonBlockingWrite{}
		w.fn = w.writev
		q.nbw = w
	}
	for _, b := range bufs {
		if len(b) == 0 {
			continue
		}
		if len(w.iov) == maxIovecs {
			break // written by the next round
		}
		v := unix.Iovec{Base: &b[0]}
		v.SetLen(len(b))
		w.iov = append(w.iov, v)
	}
	err := q.raw.Write(w.fn)
	n, werr := w.n, w.err
	clear(w.iov) // don't pin frames
	w.iov, w.n, w.err = w.iov[:0], 0, nil
	if err != nil {
		return 0, err
	}
	return int64(n), werr
}

// writev is called by RawConn.Write with the socket; returning true, it
// never lets the runtime wait for the socket to be writable.
func (w *nonBlockingWrite) writev(fd uintptr) bool {
	if len(w.iov) == 0 {
		return true
	}
	n, _, errno := unix.Syscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&w.iov[0])), uintptr(len(w.iov)))
	switch errno {
	case 0:
		w.n = int(n)
	case unix.EAGAIN, unix.EINTR:
	default:
		w.err = errno
	}
	return true
}
