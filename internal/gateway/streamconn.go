package gateway

import (
	"io"
	"net"
	"sync"
	"time"
)

// streamConn presents one tunnel stream (a reader and a writer) as a
// net.Conn, for code that serves connections (egress origination).
type streamConn struct {
	r    io.ReadCloser
	w    io.Writer
	once sync.Once
	done chan struct{}
}

func newStreamConn(r io.ReadCloser, w io.Writer) *streamConn {
	return &streamConn{r: r, w: w, done: make(chan struct{})}
}

func (c *streamConn) Read(p []byte) (int, error) { return c.r.Read(p) }
func (c *streamConn) Write(p []byte) (int, error) {
	select {
	case <-c.done:
		return 0, net.ErrClosed
	default:
	}
	return c.w.Write(p)
}
func (c *streamConn) Close() error {
	c.once.Do(func() { close(c.done) })
	return c.r.Close()
}
func (c *streamConn) LocalAddr() net.Addr              { return tunnelAddr{} }
func (c *streamConn) RemoteAddr() net.Addr             { return tunnelAddr{} }
func (c *streamConn) SetDeadline(time.Time) error      { return nil }
func (c *streamConn) SetReadDeadline(time.Time) error  { return nil }
func (c *streamConn) SetWriteDeadline(time.Time) error { return nil }

type tunnelAddr struct{}

func (tunnelAddr) Network() string { return "tunnel" }
func (tunnelAddr) String() string  { return "tunnel" }
