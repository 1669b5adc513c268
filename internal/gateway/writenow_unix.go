//go:build unix

package gateway

import (
	"io"
	"net"
	"os"
	"syscall"
)

// sinkSocket is a socket the inbound server's frame reader writes to
// without waiting (h2Body.WriteTo). Only one goroutine at a time uses it.
type sinkSocket struct {
	rc syscall.RawConn
	p  []byte // being written
	n  int    // written of p
	do func(fd uintptr) bool
}

// newSinkSocket returns the socket under w when w is a plain TCP or Unix
// connection (bytes written to the socket are the bytes w would write),
// nil otherwise.
func newSinkSocket(w io.Writer) *sinkSocket {
	rc := rawSocket(w)
	if rc == nil {
		return nil
	}
	s := &sinkSocket{rc: rc}
	s.do = s.write
	return s
}

// writeNow writes as much of p as the socket takes without waiting and
// returns how much that was: 0 when its send buffer is full or it failed
// (the caller queues the rest for a blocking write, which reports the
// error).
func (s *sinkSocket) writeNow(p []byte) int {
	s.p, s.n = p, 0
	_ = s.rc.Write(s.do)
	s.p = nil
	return s.n
}

func (s *sinkSocket) write(fd uintptr) bool {
	for s.n < len(s.p) {
		m, err := syscall.Write(int(fd), s.p[s.n:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil || m <= 0 {
			break
		}
		s.n += m
	}
	return true // never wait for the socket
}

// sourceSocket reads an application's socket once it has bytes, into a
// pooled chunk taken only then: a stream waiting on a silent application
// holds no buffer.
type sourceSocket struct {
	rc  syscall.RawConn
	c   *chunk
	n   int
	err error
	do  func(fd uintptr) bool
}

// newSourceSocket returns the socket under r when r is a plain TCP or
// Unix connection, nil otherwise.
func newSourceSocket(r io.Reader) *sourceSocket {
	rc := rawSocket(r)
	if rc == nil {
		return nil
	}
	s := &sourceSocket{rc: rc}
	s.do = s.readFd
	return s
}

// read waits until the socket has bytes, or its end, and reads them; the
// chunk is nil when none were read.
func (s *sourceSocket) read() (*chunk, int, error) {
	s.c, s.n, s.err = nil, 0, nil
	if err := s.rc.Read(s.do); err != nil {
		return nil, 0, err
	}
	c, n, err := s.c, s.n, s.err
	s.c = nil
	if c == nil && err == nil {
		err = io.EOF
	}
	return c, n, err
}

func (s *sourceSocket) readFd(fd uintptr) bool {
	c := readPool.Get().(*chunk)
	for {
		n, err := syscall.Read(int(fd), c.buf)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			c.release()
			return false // wait until readable
		case err != nil:
			c.release()
			s.err = os.NewSyscallError("read", err)
		case n > 0:
			s.c, s.n = c, n
		default:
			c.release() // EOF
		}
		return true
	}
}

// rawSocket returns the socket under x when x is a plain TCP or Unix
// connection (bytes read or written on the socket are the connection's),
// nil otherwise.
func rawSocket(x any) syscall.RawConn {
	var sc syscall.Conn
	switch c := x.(type) {
	case *net.TCPConn:
		sc = c
	case *net.UnixConn:
		sc = c
	default:
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}
