package broker

import (
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// bindToDevice binds the socket to a network interface (SO_BINDTODEVICE),
// so the endpoint serves only that NIC whatever addresses it has. It needs
// CAP_NET_RAW on older kernels.
func bindToDevice(dev string) func(network, address string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE, dev)
		})
		if err == nil && serr != nil {
			err = fmt.Errorf("binding to device %s: %w", dev, serr)
		}
		return err
	}
}

// checkDevice reports whether dev names a network interface of this host.
func checkDevice(dev string) error {
	if _, err := net.InterfaceByName(dev); err != nil {
		return fmt.Errorf("device %s: %w", dev, err)
	}
	return nil
}
