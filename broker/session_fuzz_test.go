package broker_test

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/hpfeeds-go/hpfeeds/broker"
	"github.com/hpfeeds-go/hpfeeds/broker/brokertest"
)

// FuzzSession feeds arbitrary bytes to one broker, before or after a good
// AUTH, and checks after each input that the broker still serves a healthy
// client: no byte stream may crash it, wedge it, or leave it deaf.
func FuzzSession(f *testing.F) {
	seeds := [][]byte{
		brokertest.Publish(f, "both", "chan", "hello"), brokertest.Subscribe(f, "both", "chan"), brokertest.Unsubscribe(f, "both", "chan"),
		brokertest.Publish(f, "pub", "chan", "spoofed ident"), brokertest.Subscribe(f, "both", "forbidden"), brokertest.Publish(f, "both", "forbidden", "x"),
		{0, 0, 0, 5, 3}, {0, 0, 0, 5, 2}, {0, 0, 0, 0, 0}, {0, 0, 0, 4, 1}, {0xff, 0xff, 0xff, 0xff, 3},
		{0, 0, 0, 5, 9}, {0, 0, 0, 7, 3, 5, 'A'}, {0, 0, 0, 9, 3, 1, 'A', 9, 'B'}, {0, 0, 0, 6, 4, 0},
		{0, 0, 0, 10, 4, 0xff, 'A'}, {0, 0, 0, 0x1f, 2, 4, 'b', 'o', 't', 'h'},
		append(brokertest.Subscribe(f, "both", "chan"), brokertest.Publish(f, "both", "chan", "self")...),
	}
	for _, s := range seeds {
		f.Add(s, false)
		f.Add(s, true)
	}
	srv := brokertest.Start(f, testUsers(), func(c *broker.Config) {
		c.AuthTimeout = 500 * time.Millisecond
		c.MaxPublishSize = 1 << 12
		c.MaxSubscribeSize = 1 << 10
	})
	f.Fuzz(func(t *testing.T, data []byte, authFirst bool) {
		var nc net.Conn
		if authFirst {
			nc = brokertest.Login(t, srv.Addr, "both", "bothsecret").Conn
		} else {
			nc = brokertest.Dial(t, srv.Addr).Conn
		}
		nc.SetDeadline(time.Now().Add(2 * time.Second))
		nc.Write(data)
		// The end of the stream makes the broker finish the session; read
		// what it answers until it closes (or the deadline, if it never does).
		nc.(*net.TCPConn).CloseWrite()
		if _, err := io.Copy(io.Discard, nc); err != nil && !brokertest.IsReset(err) {
			t.Fatalf("the broker did not close the session after the stream ended: %v", err)
		}
		nc.Close()

		c := brokertest.Login(t, srv.Addr, "both", "bothsecret")
		c.Sync("both")
	})
}
