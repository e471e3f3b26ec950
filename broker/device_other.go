//go:build !linux

package broker

import (
	"fmt"
	"runtime"
	"syscall"
)

func bindToDevice(dev string) func(network, address string, c syscall.RawConn) error {
	return func(string, string, syscall.RawConn) error { return checkDevice(dev) }
}

func checkDevice(dev string) error {
	return fmt.Errorf("device=%s: binding to a device (SO_BINDTODEVICE) is only supported on Linux, not %s; bind by interface= address instead", dev, runtime.GOOS)
}
