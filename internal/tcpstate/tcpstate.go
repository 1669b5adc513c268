// Package tcpstate tells a TCP connection its peer reset from one its
// peer ended cleanly, after a read returned EOF.
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

import "net"

// WasReset says whether c, a connection whose read returned EOF and whose
// writing was neither shut down nor closed here, was reset by its peer
// rather than ended. It is false where the state cannot be read (not TCP,
// or not Linux).
func WasReset(c net.Conn) bool { return wasReset(c) }
