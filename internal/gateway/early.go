package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// A tunnel's first bytes travel with its CONNECT: the application's
// request leaves in the same flight as the stream's HEADERS, so a new
// connection costs one round trip across the WAN, not two. A stream that
// fails before the peer answered is retried on another connection only if
// none of the application's bytes were handed to the failed one — so a
// request is never delivered twice.

// upload is the application's side of a stream. The attempt whose
// transport asks for bytes reads them from the application's connection
// straight into the transport's buffer: no goroutine of its own, no hand-off
// between the read and the DATA frame that carries it. Reads are one at a
// time (mu is held across them), so bytes stay in order across attempts: a
// read that returns after its attempt was abandoned keeps its bytes (held)
// for the next attempt.
type upload struct {
	src  Source
	mu   sync.Mutex // held across src.Read
	held []byte     // read for an abandoned attempt; the next attempt's first bytes
	err  error      // how the application's side ended; set before done is closed
	done chan struct{}
	stop chan struct{} // nobody will take more bytes
	once sync.Once
	// interrupted: an abandoned attempt moved src's read deadline into the
	// past to end its read; the next read puts it back.
	interrupted atomic.Bool
}

// Source is the application's side of a tunnel: a connection, whose read
// deadline lets an attempt that is given up end the read it is waiting in
// (the transport waits for that before it lets the stream go).
type Source interface {
	io.Reader
	SetReadDeadline(time.Time) error
}

func (u *upload) init(src Source) {
	u.src, u.done, u.stop = src, make(chan struct{}), make(chan struct{})
}

// halt makes reads drop what they get from now on.
func (u *upload) halt() { u.once.Do(func() { close(u.stop) }) }

// interrupt ends a read under way, with a timeout and no bytes.
func (u *upload) interrupt() {
	u.interrupted.Store(true)
	_ = u.src.SetReadDeadline(longAgo)
}

// longAgo is a read deadline in the past: it ends a read at once.
var longAgo = time.Unix(1, 0)

// end records how the application's side ended. u.mu is held.
func (u *upload) end(err error) {
	u.err = err
	close(u.done)
}

func (u *upload) halted() bool {
	select {
	case <-u.stop:
		return true
	default:
		return false
	}
}

// ended is the error a body reports once the application's side ended:
// io.EOF (END_STREAM) for a half-close, the read error otherwise.
func (u *upload) ended() error {
	if isClosed(u.err) {
		return io.EOF
	}
	return u.err
}

// errAbandoned ends the body of an attempt that lost its stream.
var errAbandoned = errors.New("tunnel attempt abandoned")

// attemptBody is one attempt's request body. It counts what it handed to
// the transport; once abandoned it takes nothing more from the upload.
type attemptBody struct {
	watch    answerWatch // bounds the wait for the peer's answer
	u        *upload
	abandon  chan struct{}
	once     sync.Once
	consumed atomic.Int64
}

func (b *attemptBody) init(u *upload) {
	b.u, b.abandon = u, make(chan struct{})
}

func (b *attemptBody) abandoned() bool {
	select {
	case <-b.abandon:
		return true
	default:
		return b.u.halted()
	}
}

func (b *attemptBody) Read(dst []byte) (int, error) {
	u := b.u
	u.mu.Lock()
	defer u.mu.Unlock()
	if b.abandoned() {
		return 0, errAbandoned
	}
	if len(u.held) > 0 {
		n := copy(dst, u.held)
		u.held = u.held[n:]
		b.consumed.Add(int64(n))
		return n, nil
	}
	if u.err != nil {
		return 0, u.ended()
	}
	if u.interrupted.Swap(false) {
		_ = u.src.SetReadDeadline(time.Time{})
	}
	n, err := u.src.Read(dst)
	if b.abandoned() {
		// The attempt was given up while its read waited: its bytes
		// reached nobody, and go first on the next attempt.
		if n > 0 && !u.halted() {
			u.held = append(u.held, dst[:n]...)
		}
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			u.end(err)
		}
		return 0, errAbandoned
	}
	if err != nil {
		u.end(err)
	}
	b.consumed.Add(int64(n))
	switch {
	case err == nil:
		return n, nil
	case u.ended() == io.EOF:
		return n, io.EOF // the last bytes go with END_STREAM
	case n > 0:
		return n, nil // the error on the next read, after these bytes
	default:
		return 0, u.ended()
	}
}

// Close abandons the attempt (the transport calls it when done with the
// body, and waits for a read under way to return before it lets the
// stream go: Close ends that read).
func (b *attemptBody) Close() error {
	b.once.Do(func() {
		close(b.abandon)
		b.u.interrupt()
	})
	return nil
}

// Stream is an open tunnel stream.
type Stream struct {
	// Down is what the peer sends back.
	Down io.ReadCloser
	body *attemptBody

	// One allocation holds what a stream needs when its first attempt
	// succeeds, as most do.
	up    upload
	first attemptBody
	down  cancelOnClose
	url   url.URL
}

// connectHeader is the header of every tunnel's CONNECT: empty, and only
// read (a RoundTripper does not modify the request it is given).
var connectHeader = http.Header{}

// Sent is how many of the application's bytes went into the tunnel.
func (s *Stream) Sent() int64 { return s.body.consumed.Load() }

// WaitSent waits until the application finished sending (EOF or an error,
// returned) or the stream stopped taking its bytes (nil).
func (s *Stream) WaitSent() error {
	select {
	case <-s.up.done:
		if s.up.ended() == io.EOF {
			return nil
		}
		return s.up.err
	case <-s.body.abandon:
		s.up.halt()
		return nil
	}
}

// Close releases the stream.
func (s *Stream) Close() error {
	s.up.halt()
	return s.Down.Close()
}

// OpenStream opens a tunnel stream to authority in cluster whose request
// body is src, sent as soon as it arrives (not after the peer's answer).
//
// ctx bounds the stream's whole life. Waiting for the peer's answer is
// bounded by the dial timeout while the connection is silent, and by
// maxAnswerWait dial timeouts while it still delivers bytes (liveness.go).
func (p *Pool) OpenStream(ctx context.Context, cluster, authority string, src Source) (*Stream, error) {
	pr, err := p.peer(cluster)
	if err != nil {
		return nil, err
	}
	st := &Stream{url: url.URL{Host: authority}}
	st.up.init(src)
	ok := false
	defer func() {
		if !ok {
			st.up.halt()
		}
	}()
	var lastErr error
	for attempt := 0; attempt < max(2, len(pr.addrs)+1); attempt++ {
		pc, err := p.conn(ctx, pr)
		if err != nil {
			return nil, err
		}
		body := &st.first
		if attempt > 0 {
			body = &attemptBody{}
		}
		body.init(&st.up)
		sctx, cancel := context.WithCancel(ctx)
		req := (&http.Request{
			Method: http.MethodConnect,
			URL:    &st.url,
			Host:   authority,
			Header: connectHeader,
			Body:   body,
		}).WithContext(sctx)
		body.watch.begin(pc, p.dialTimeout, cancel)
		resp, err := pc.cc.RoundTrip(req)
		verdict := body.watch.end()
		if verdict != waiting && err == nil {
			err = context.DeadlineExceeded // answered just as the watch gave up
			_ = resp.Body.Close()
		}
		if err != nil {
			cancel()
			_ = body.Close()
			lastErr = err
			if ctx.Err() != nil {
				return nil, err
			}
			if verdict == stalled || pc.cc.Err() != nil {
				pr.markBroken(pc)
			}
			if verdict == tooSlow {
				// The connection is alive; only this stream gave up.
				return nil, fmt.Errorf("peer gateway of %s did not answer within %s on a live connection: %w", pr.cluster, maxAnswerWait*p.dialTimeout, err)
			}
			if body.consumed.Load() > 0 {
				return nil, err // bytes may have reached the peer: never resend
			}
			continue
		}
		if resp.StatusCode != http.StatusOK {
			msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			_ = resp.Body.Close()
			_ = body.Close()
			cancel()
			return nil, &RefusedError{Status: resp.StatusCode, Message: string(msg)}
		}
		ok = true
		st.body = body
		st.down = cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
		st.Down = &st.down
		return st, nil
	}
	return nil, lastErr
}
