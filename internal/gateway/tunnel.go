package gateway

import (
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
)

// copyBufferSize: large enough for few syscalls on long fat links, small
// enough that 10,000 streams stay within memory.
const copyBufferSize = 32 << 10

var bufferPool = sync.Pool{New: func() any { b := make([]byte, copyBufferSize); return &b }}

// copyBuffered copies with a pooled buffer and returns the bytes copied.
func copyBuffered(dst io.Writer, src io.Reader) (int64, error) {
	bp := bufferPool.Get().(*[]byte)
	defer bufferPool.Put(bp)
	return io.CopyBuffer(dst, onlyReader{src}, *bp)
}

// onlyReader hides WriterTo/ReaderFrom so CopyBuffer uses our buffer.
type onlyReader struct{ io.Reader }

// flushWriter flushes every write of a tunnel stream at once: it carries
// interactive bytes, not a document to buffer.
type flushWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err == nil {
		err = f.rc.Flush()
	}
	return n, err
}

// closeWrite half-closes a connection (TCP FIN) where possible.
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = c.Close()
}

func isClosed(err error) bool {
	return err == nil || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe)
}
