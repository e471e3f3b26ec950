//go:build unix

package broker

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// mapBuf maps size bytes of fresh anonymous memory, nil if it cannot.
func mapBuf(size int) unsafe.Pointer {
	p, err := unix.MmapPtr(-1, 0, nil, uintptr(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANON)
	if err != nil {
		return nil
	}
	return p
}

// unmapBuf gives a buffer of mapBuf's back to the system.
func unmapBuf(p unsafe.Pointer, size int) {
	unix.MunmapPtr(p, uintptr(size))
}
