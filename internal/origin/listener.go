package origin

import (
	"errors"
	"net"
	"sync"
)

var errListenerDone = errors.New("connection served")

// oneConnListener hands one connection to an http.Server, then reports
// done once that connection is closed, so Serve returns.
type oneConnListener struct {
	conn   net.Conn
	once   sync.Once
	closed chan struct{}
	taken  chan struct{}
}

func newOneConnListener(c net.Conn) *oneConnListener {
	l := &oneConnListener{closed: make(chan struct{}), taken: make(chan struct{})}
	l.conn = &notifyConn{Conn: c, onClose: func() { l.once.Do(func() { close(l.closed) }) }}
	return l
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	select {
	case <-l.taken:
		<-l.closed
		return nil, errListenerDone
	default:
		close(l.taken)
		return l.conn, nil
	}
}

func (l *oneConnListener) Close() error   { return nil }
func (l *oneConnListener) Addr() net.Addr { return l.conn.LocalAddr() }

type notifyConn struct {
	net.Conn
	onClose func()
}

func (c *notifyConn) Close() error {
	err := c.Conn.Close()
	c.onClose()
	return err
}
