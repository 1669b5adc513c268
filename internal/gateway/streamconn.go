package gateway

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// streamConn presents one tunnel stream (a reader and a writer) as a
// net.Conn, for code that serves connections (egress origination).
//
// Reads honour the read deadline: net/http's server aborts its
// background read with a deadline in the past (on Hijack, as a websocket
// upgrade does, and after each response) and then reads on, and enforces
// its header and idle timeouts with deadlines. A read that outlives its
// deadline returns a timeout; its bytes are kept for the next Read.
type streamConn struct {
	r    io.ReadCloser
	w    io.Writer
	once sync.Once
	done chan struct{}
	// reset, when set, resets the stream: Abort calls it, which also
	// wakes a Write waiting for the peer's flow-control window.
	reset func()
	// closeWrite, when set, ends the answer while the request goes on.
	closeWrite func() error

	mu       sync.Mutex
	deadline time.Time
	changed  chan struct{}   // closed when the deadline changes
	inFlight chan readResult // the read under way, if any
	rest     []byte          // bytes of a finished read not yet returned
	restErr  error           // its error, returned after rest
}

type readResult struct {
	b   []byte
	err error
}

func newStreamConn(r io.ReadCloser, w io.Writer) *streamConn {
	return &streamConn{r: r, w: w, done: make(chan struct{}), changed: make(chan struct{})}
}

func (c *streamConn) Read(p []byte) (int, error) {
	for {
		c.mu.Lock()
		if len(c.rest) > 0 || c.restErr != nil {
			n := copy(p, c.rest)
			c.rest = c.rest[n:]
			var err error
			if len(c.rest) == 0 {
				err, c.restErr = c.restErr, nil
			}
			c.mu.Unlock()
			return n, err
		}
		if c.inFlight == nil {
			ch := make(chan readResult, 1)
			c.inFlight = ch
			go func(n int) {
				b := make([]byte, n)
				n, err := c.r.Read(b)
				ch <- readResult{b[:n], err}
			}(len(p))
		}
		inFlight, deadline, changed := c.inFlight, c.deadline, c.changed
		c.mu.Unlock()

		var expired <-chan time.Time
		var timer *time.Timer
		if !deadline.IsZero() {
			d := time.Until(deadline)
			if d <= 0 {
				return 0, os.ErrDeadlineExceeded
			}
			timer = time.NewTimer(d)
			expired = timer.C
		}
		select {
		case res := <-inFlight:
			c.mu.Lock()
			c.inFlight = nil
			c.rest, c.restErr = res.b, res.err
			c.mu.Unlock()
		case <-expired:
			return 0, os.ErrDeadlineExceeded
		case <-changed:
		}
		if timer != nil {
			timer.Stop()
		}
	}
}
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

// errNoHalfClose: the stream's server cannot end the answer alone.
var errNoHalfClose = errors.New("the stream cannot be half-closed")

// CloseWrite ends the answer (END_STREAM) while the request goes on, where
// the stream's server can; otherwise it returns an error and changes
// nothing.
func (c *streamConn) CloseWrite() error {
	if c.closeWrite == nil {
		return errNoHalfClose
	}
	return c.closeWrite()
}

// Abort ends the stream as failed: a reset, not the clean end the
// handler's return makes.
func (c *streamConn) Abort() {
	_ = c.Close()
	if c.reset != nil {
		c.reset()
	}
}

func (c *streamConn) LocalAddr() net.Addr              { return tunnelAddr{} }
func (c *streamConn) RemoteAddr() net.Addr             { return tunnelAddr{} }
func (c *streamConn) SetDeadline(t time.Time) error    { return c.SetReadDeadline(t) }
func (c *streamConn) SetWriteDeadline(time.Time) error { return nil }

func (c *streamConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deadline = t
	close(c.changed)
	c.changed = make(chan struct{})
	return nil
}

type tunnelAddr struct{}

func (tunnelAddr) Network() string { return "tunnel" }
func (tunnelAddr) String() string  { return "tunnel" }
