//go:build !linux

package main

import (
	"errors"
	"net"
	"time"
)

// stampedConn needs the kernel's receive times (SO_TIMESTAMPNS), which
// this bench reads on Linux only.
type stampedConn struct {
	net.Conn
	last time.Time
}

func newStampedConn(net.Conn) (*stampedConn, error) {
	return nil, errors.New("the live subscriber's receive times need Linux (SO_TIMESTAMPNS)")
}
