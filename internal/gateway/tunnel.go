package gateway

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// copyBufferSize: large enough for few syscalls on long fat links, small
// enough that 10,000 streams stay within memory.
const copyBufferSize = 32 << 10

// bufferPool holds the copy buffers of tunnels, as chunks: the inbound
// server queues a stream's received bytes in them as they are.
var bufferPool = sync.Pool{New: func() any { return &chunk{buf: make([]byte, copyBufferSize)} }}

// chunk is a pooled copy buffer and the bytes it holds.
type chunk struct {
	buf []byte // copyBufferSize
	b   []byte // what is held, within buf
}

func (c *chunk) release() {
	c.b = nil
	if len(c.buf) == readBufferSize {
		readPool.Put(c)
		return
	}
	bufferPool.Put(c)
}

// readBufferSize is a socket read's when a tunnel moves bytes from a plain
// socket (sourceSocket): what one DATA frame carries. The buffer is held
// only while its bytes move, so its size costs no memory per open stream;
// reading as much as a frame halves the syscalls and frames of a bulk
// transfer against reads of copyBufferSize.
const readBufferSize = 64 << 10

var readPool = sync.Pool{New: func() any { return &chunk{buf: make([]byte, readBufferSize)} }}

// copyBuffered copies with pooled buffers and returns the bytes copied.
// Generic in the writer so a flushWriter is not boxed per stream; it
// never uses ReaderFrom/WriterTo, whose buffers would not be pooled.
func copyBuffered[W io.Writer](dst W, src io.Reader) (written int64, err error) {
	return copyChunks(dst, func() (*chunk, int, error) { return readChunk(src) })
}

// copyFrom copies from src as copyBuffered does; from a plain socket, a
// pooled buffer is taken only once bytes are there to read, so a tunnel
// waiting on a silent backend or application holds none.
func copyFrom[W io.Writer](dst W, src io.Reader) (written int64, err error) {
	s := newSourceSocket(src)
	if s == nil {
		return copyBuffered(dst, src)
	}
	return copyChunks(dst, s.read)
}

// copyChunks writes the bytes of each chunk next returns to dst and
// releases it, until next fails: io.EOF ends the copy cleanly.
func copyChunks[W io.Writer](dst W, next func() (*chunk, int, error)) (written int64, err error) {
	for {
		c, n, rerr := next()
		if n > 0 {
			m, werr := dst.Write(c.buf[:n])
			c.release()
			written += int64(m)
			if werr == nil && m != n {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				return written, werr
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				return written, nil
			}
			return written, rerr
		}
	}
}

// readChunk reads into a pooled chunk; nil when nothing was read.
func readChunk(r io.Reader) (*chunk, int, error) {
	c := bufferPool.Get().(*chunk)
	n, err := r.Read(c.buf)
	if n == 0 {
		c.release()
		return nil, 0, err
	}
	return c, n, err
}

// flusher is how a tunnel stream's response writer is flushed, with the
// error telling a reset stream (net/http's HTTP/2 writer has it).
type flusher interface{ FlushError() error }

// controllerFlusher flushes a writer that has no FlushError of its own.
type controllerFlusher struct{ rc *http.ResponseController }

func (c controllerFlusher) FlushError() error { return c.rc.Flush() }

// flushWriter flushes every write of a tunnel stream at once: it carries
// interactive bytes, not a document to buffer.
type flushWriter struct {
	w io.Writer
	f flusher
}

func newFlushWriter(w http.ResponseWriter) flushWriter {
	if f, ok := w.(flusher); ok {
		return flushWriter{w: w, f: f}
	}
	return flushWriter{w: w, f: controllerFlusher{http.NewResponseController(w)}}
}

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err == nil {
		err = f.f.FlushError()
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

// An application may still be sending when its answer has ended: a
// server that refuses a large upload answers and closes without reading
// it. Its connection is then half-closed and what it still sends is read
// and dropped, for up to lingerTime in all and lingerIdle between reads
// (nginx's lingering_time and lingering_timeout), before the socket is
// closed. Closed with bytes unread, the socket would be reset, and the
// kernel would throw away the end of the answer not yet sent: the
// application would see the answer cut off, or, once its own write took
// the reset's error, a clean end after a cut-off answer.
var (
	lingerTime = 30 * time.Second
	lingerIdle = 5 * time.Second
)

// linger reads and drops what c still sends, after its write side was
// closed, until c ends, stops sending for lingerIdle, lingerTime passes
// or ctx ends. reading is closed when another reader of c has stopped:
// linger takes over from it.
func linger(ctx context.Context, c net.Conn, reading <-chan struct{}) {
	end := time.Now().Add(lingerTime)
	next := func() time.Time {
		if t := time.Now().Add(lingerIdle); t.Before(end) {
			return t
		}
		return end
	}
	_ = c.SetReadDeadline(next()) // bounds the other reader's read too
	stop := context.AfterFunc(ctx, func() { _ = c.SetReadDeadline(time.Now()) })
	defer stop()
	select {
	case <-reading:
	case <-ctx.Done():
		return
	}
	b := readPool.Get().(*chunk)
	defer b.release()
	for ctx.Err() == nil {
		if _, err := c.Read(b.buf); err != nil {
			return
		}
		_ = c.SetReadDeadline(next())
	}
}

// isEOF says whether a read ended cleanly.
func isEOF(err error) bool { return err == nil || errors.Is(err, io.EOF) }

func isClosed(err error) bool {
	return err == nil || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe)
}
