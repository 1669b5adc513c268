package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"

	"github.com/backbone-mesh/backbone/internal/tcpstate"
)

// A tunnel's first bytes travel with its CONNECT: the application's
// request leaves in the same flight as the stream's HEADERS, so a new
// connection costs one round trip across the WAN, not two. A stream that
// fails before the peer answered is retried on another connection only if
// none of the application's bytes were handed to the failed one, or if the
// peer said it did not process the stream (RST_STREAM REFUSED_STREAM, or a
// GOAWAY below its ID) and the bytes sent with it were kept (up to
// maxReplay): they go first on the next attempt. A request is never
// delivered twice.

// maxReplay bounds the bytes a stream keeps, until the peer answers, to
// send again on another attempt if the peer did not process it.
const maxReplay = 64 << 10

// errAbandoned ends the upload of a stream nobody takes bytes for.
var errAbandoned = errors.New("tunnel stream abandoned")

// Stream is an open tunnel stream.
type Stream struct {
	// Down is what the peer sends back. Its WriteTo lets the
	// connection's frame reader write to a socket itself (h2Body).
	Down *StreamDown

	src  io.Reader
	down StreamDown

	// The upload: one goroutine reads the application's bytes and sends
	// them on the current attempt. Between attempts it waits, holding
	// what it read, so nothing is lost or reordered.
	mu   sync.Mutex // held while the upload sends
	cond sync.Cond
	cur  *h2Stream // the attempt bytes go to; nil between attempts
	// settled: OpenStream returned, no attempt follows the current one.
	// Not under mu, which the upload holds while it waits for a window:
	// the answer must not wait behind the upload.
	settled  atomic.Bool
	gaveUp   bool // nobody takes bytes any more
	attempt  atomic.Pointer[h2Stream]
	sent     atomic.Int64
	early    []byte        // what went to unanswered attempts, kept to replay
	earlyEnd bool          // END_STREAM went with them
	overflow bool          // more than maxReplay went: no replay
	done     chan struct{} // the upload ended
	err      error         // the application's read error, if that ended it
	srcEnded bool          // the application's side ended (EOF or error); set before done closes
	srcShut  atomic.Bool   // the application's connection was half-closed here (ShutSource)
	lastRead atomic.Int64  // monotime of the application's latest bytes
	halted   chan struct{} // closed by Close
	once     sync.Once
}

// StreamDown is the peer's side of a stream.
type StreamDown struct {
	h2Body
	s *Stream
}

// Close ends the stream.
func (d *StreamDown) Close() error { return d.s.Close() }

// Sent is how many of the application's bytes went into the tunnel.
func (s *Stream) Sent() int64 { return s.sent.Load() }

// WaitSent waits until the application finished sending (nil after EOF,
// its error otherwise) or the stream stopped taking its bytes (nil).
func (s *Stream) WaitSent() error {
	select {
	case <-s.done:
		return s.err
	case <-s.halted:
		return nil
	}
}

// ShutSource half-closes the application's connection (the answer ended)
// and notes it: after that, the connection's state no longer tells the
// application's reset from its clean end.
func (s *Stream) ShutSource(c net.Conn) {
	s.srcShut.Store(true)
	closeWrite(c)
}

// WaitUpload waits until the upload ended: the application ended its
// side (END_STREAM went), it failed, or the peer stopped taking its bytes
// (the stream was reset or closed); or until ctx ends.
// It also returns false once the application has sent nothing for
// halfCloseIdle: a half-closed tunnel whose application went quiet (a
// pool's idle connection, whose peer closed it) would otherwise hold its
// stream, and a slot of the peer's stream limit, until the application
// closes it. It returns true otherwise.
func (s *Stream) WaitUpload(ctx context.Context) (ended bool) {
	var reset <-chan struct{}
	if st := s.attempt.Load(); st != nil {
		reset = st.ended
	}
	idle := time.NewTimer(halfCloseIdle)
	defer idle.Stop()
	for {
		select {
		case <-s.done:
			return true
		case <-reset:
			return true
		case <-ctx.Done():
			return true
		case <-idle.C:
			quiet := monotime() - time.Duration(s.lastRead.Load())
			if quiet >= halfCloseIdle {
				return false
			}
			idle.Reset(halfCloseIdle - quiet)
		}
	}
}

// halfCloseIdle bounds how long a half-closed tunnel waits for an
// application that sends nothing (HAProxy's timeout client-fin).
var halfCloseIdle = 30 * time.Second

// EndedBadly says whether the peer's side failed: the stream was reset
// with an error code, or its connection was lost. A RST_STREAM NO_ERROR
// after a complete answer (RFC 9113 §8.1) is a clean end, as is our own.
func (s *Stream) EndedBadly() bool {
	st := s.attempt.Load()
	if st == nil {
		return false
	}
	st.c.mu.Lock()
	err := st.reset
	st.c.mu.Unlock()
	var pr peerReset
	switch {
	case err == nil, errors.Is(err, errStreamEnded):
		return false
	case errors.As(err, &pr):
		return pr.code != http2.ErrCodeNo
	}
	return true
}

// Unread says whether the application may still send bytes nobody will
// read: the upload stopped, or will, before the application's end. done
// is closed once the upload no longer reads.
func (s *Stream) Unread() (unread bool, done <-chan struct{}) {
	select {
	case <-s.done:
		return !s.srcEnded, s.done
	default:
		return true, s.done
	}
}

// Close ends the stream: a RST_STREAM tells the peer unless both sides
// had ended it, and the upload stops taking bytes.
func (s *Stream) Close() error {
	if st := s.attempt.Load(); st != nil {
		st.c.finishStream(st) // first: it wakes the upload if it waits for a window
	}
	s.giveUp()
	s.once.Do(func() { close(s.halted) })
	return nil
}

func (s *Stream) giveUp() {
	s.mu.Lock()
	s.gaveUp = true
	s.cur = nil
	s.cond.Broadcast()
	s.mu.Unlock()
}

// setAttempt makes st the attempt the application's bytes go to: first
// those an attempt the peer did not process took.
func (s *Stream) setAttempt(st *h2Stream) error {
	s.attempt.Store(st)
	s.mu.Lock()
	defer s.mu.Unlock()
	var err error
	if len(s.early) > 0 || s.earlyEnd {
		// Under s.mu: the upload's next bytes wait behind these.
		var n int
		n, err = st.send(s.early, s.earlyEnd)
		s.sent.Store(int64(n))
	}
	s.cur = st
	s.cond.Broadcast()
	return err
}

// notProcessed says whether the peer said it did not process a stream
// (RFC 9113 §8.7): it may be retried with the bytes sent on it.
func notProcessed(err error) bool {
	var pr peerReset
	return errors.Is(err, errNotProcessed) || (errors.As(err, &pr) && pr.code == http2.ErrCodeRefusedStream)
}

// upload sends the application's bytes as they come, and END_STREAM at
// its EOF. A read error while the stream is open resets it, and is what
// WaitSent reports.
func (s *Stream) upload() {
	defer close(s.done)
	src := newSourceSocket(s.src)
	for {
		var c *chunk
		var n int
		var rerr error
		if src != nil {
			c, n, rerr = src.read()
		} else {
			c, n, rerr = readChunk(s.src)
		}
		if n > 0 {
			s.lastRead.Store(int64(monotime()))
		}
		if nc, ok := s.src.(net.Conn); ok && rerr == io.EOF && !s.srcShut.Load() && tcpstate.WasReset(nc) {
			// The application reset its connection, and a write to it
			// took the error: its request was cut off, not ended.
			rerr = tcpstate.ErrReset
		}
		var p []byte
		if c != nil {
			p = c.buf[:n]
		}
		var err error
		if n > 0 || rerr == io.EOF {
			err = s.deliver(p, rerr == io.EOF)
		}
		if c != nil {
			c.release()
		}
		if err != nil || rerr == io.EOF {
			s.srcEnded = rerr != nil
			return // the stream ended, or the application's side did
		}
		if rerr != nil {
			select {
			case <-s.halted:
			default:
				s.err = rerr
				if st := s.attempt.Load(); st != nil {
					st.c.resetStream(st.id, http2.ErrCodeCancel, true)
				}
			}
			s.srcEnded = true
			s.giveUp()
			return
		}
	}
}

// deliver sends p, then END_STREAM if end, on the current attempt,
// waiting for one while there is none. An attempt that fails before the
// peer answered makes way for the next one.
func (s *Stream) deliver(p []byte, end bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		for s.cur == nil && !s.gaveUp {
			s.cond.Wait()
		}
		if s.gaveUp {
			return errAbandoned
		}
		st := s.cur
		n, err := st.send(p, end)
		s.sent.Add(int64(n))
		switch {
		case s.settled.Load():
			s.early = nil
		case !s.overflow:
			// Kept until the peer answers, in case it did not process
			// the stream.
			if len(s.early)+n > maxReplay {
				s.overflow, s.early = true, nil
			} else {
				s.early = append(s.early, p[:n]...)
				s.earlyEnd = end && err == nil
			}
		}
		if err == nil || s.settled.Load() {
			return err
		}
		// Failed before the peer answered: OpenStream tries another
		// attempt (which first replays what this one took, if the peer
		// did not process it), or gives up.
		p = p[n:]
		if s.cur == st {
			s.cur = nil
		}
	}
}

// OpenStream opens a tunnel stream to authority in cluster whose bytes
// are read from src, sent as soon as they arrive (not after the peer's
// answer).
//
// ctx bounds the wait for the stream. Waiting for the peer's answer is
// bounded by the dial timeout while the connection is silent, and by
// maxAnswerWait dial timeouts while it still delivers bytes (liveness.go).
func (p *Pool) OpenStream(ctx context.Context, cluster, authority string, src io.Reader) (*Stream, error) {
	pr, err := p.peer(cluster)
	if err != nil {
		return nil, err
	}
	s := &Stream{src: src, done: make(chan struct{}), halted: make(chan struct{})}
	s.cond.L = &s.mu
	uploading := false
	var lastErr error
	for range max(2, len(pr.addrs)+1) {
		if pr.isClosed() {
			// The Link changed since: its new peer.
			if pr, err = p.peer(cluster); err != nil {
				s.giveUp()
				return nil, err
			}
		}
		pc, err := p.conn(ctx, pr)
		if err != nil {
			s.giveUp()
			return nil, err
		}
		st, err := pc.cc.openStream(http.MethodConnect, authority, "", false)
		if err != nil {
			lastErr = err
			if errors.Is(pc.cc.Err(), errConnClosed) {
				pr.markBroken(pc)
			}
			continue
		}
		// The watch covers the replay too: sending the bytes kept for it
		// waits for the peer's window, which a dead connection never
		// opens; giving up ends the stream, which wakes the replay.
		sctx, cancel := context.WithCancel(ctx)
		var watch answerWatch
		watch.begin(pc, p.dialTimeout, cancel)
		unblock := context.AfterFunc(sctx, func() { pc.cc.finishStream(st) })
		replayErr := s.setAttempt(st)
		if !uploading {
			uploading = true
			go s.upload()
		}
		err = st.awaitAnswer(sctx)
		if !unblock() && err == nil {
			err = sctx.Err() // answered as the stream was given up
		}
		verdict := watch.end()
		cancel()
		if err == nil && replayErr != nil {
			err = replayErr
		}
		if verdict != waiting && err == nil {
			err = context.DeadlineExceeded // answered just as the watch gave up
		}
		if err == nil {
			if st.status != http.StatusOK {
				mctx, cancel := context.WithTimeout(ctx, p.dialTimeout)
				msg, _ := readAnswer(mctx, st, 512)
				cancel()
				_ = s.Close()
				return nil, &RefusedError{Status: st.status, Message: string(msg)}
			}
			s.settled.Store(true)
			if s.mu.TryLock() { // else the upload drops them at its next bytes
				s.early = nil
				s.mu.Unlock()
			}
			s.down = StreamDown{h2Body: h2Body{st: st}, s: s}
			s.Down = &s.down
			return s, nil
		}
		lastErr = err
		pc.cc.finishStream(st) // first: it wakes the upload if it waits for a window
		s.mu.Lock()
		retry := ctx.Err() == nil && verdict != tooSlow &&
			(s.sent.Load() == 0 || (notProcessed(err) && !s.overflow))
		if s.cur == st {
			s.cur = nil
		}
		if !retry {
			s.gaveUp = true
			s.cond.Broadcast()
		}
		s.mu.Unlock()
		if verdict == stalled || errors.Is(pc.cc.Err(), errConnClosed) {
			pr.markBroken(pc)
		}
		switch {
		case ctx.Err() != nil:
			return nil, err
		case verdict == tooSlow:
			// The connection is alive; only this stream gave up.
			return nil, fmt.Errorf("peer gateway of %s did not answer within %s on a live connection: %w", pr.cluster, maxAnswerWait*p.dialTimeout, err)
		case !retry:
			return nil, err // bytes may have reached the peer: never resend
		}
	}
	s.giveUp()
	return nil, lastErr
}
