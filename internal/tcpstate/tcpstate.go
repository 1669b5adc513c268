// Package tcpstate tells a TCP connection its peer reset from one its
// peer ended cleanly, after a read returned EOF, and ends a connection
// with a reset of its own.
//
// The kernel reports a reset's error once, to whichever call on the
// socket comes first. When a proxy's two copies share a socket, the
// writing one may take it, and the reading one then sees a plain end of
// stream: a reset, and with it a cut-off answer, would pass on as a clean
// end. The connection's state still tells them apart as long as this
// side has not ended its own writing: a socket whose peer ended cleanly
// is half-closed (CLOSE_WAIT) until it is closed here; one its peer reset
// is closed (CLOSE). (After both ends' FINs, the one that sent it first
// is CLOSE as well: Linux moves it to a TIME_WAIT socket of its own.)
package tcpstate

import (
	"crypto/tls"
	"errors"
	"net"
)

// ErrReset stands for a peer's reset whose error another call on the
// socket took (WasReset).
var ErrReset = errors.New("connection reset by peer")

// WasReset says whether c, a connection whose read returned EOF and whose
// writing was neither shut down nor closed here, was reset by its peer
// rather than ended. Under TLS it looks at the TCP connection. It is
// false where the state cannot be read (not TCP, or not Linux).
func WasReset(c net.Conn) bool { return wasReset(raw(c)) }

// Abort ends c with a TCP reset (under TLS too), so its peer sees the
// connection fail rather than a clean end that would pass a cut-off
// stream for a complete one; a connection that is not TCP is closed.
func Abort(c net.Conn) {
	c = raw(c)
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

// raw is the connection under TLS, or c.
func raw(c net.Conn) net.Conn {
	if tc, ok := c.(*tls.Conn); ok {
		return tc.NetConn()
	}
	return c
}
