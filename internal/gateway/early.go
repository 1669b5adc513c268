package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
)

// A tunnel's first bytes travel with its CONNECT: the application's
// request leaves in the same flight as the stream's HEADERS, so a new
// connection costs one round trip across the WAN, not two. A stream that
// fails before the peer answered is retried on another connection only if
// none of the application's bytes were handed to the failed one — so a
// request is never delivered twice.

// pump reads the application's connection into pooled chunks, one reader
// goroutine for the stream's whole life, whichever attempt sends them.
type pump struct {
	ch   chan *chunk
	err  error         // set before ch and done are closed: io.EOF or the read error
	done chan struct{} // the application's side ended
	stop chan struct{} // nobody will take more chunks
	once sync.Once
}

// start begins reading src (the pump lives inside its Stream: one
// allocation per stream).
func (p *pump) start(src io.Reader) {
	p.ch, p.done, p.stop = make(chan *chunk), make(chan struct{}), make(chan struct{})
	go p.run(src)
}

func (p *pump) run(src io.Reader) {
	defer close(p.done)
	for {
		c := bufferPool.Get().(*chunk)
		n, err := src.Read(c.buf)
		if n > 0 {
			c.b = c.buf[:n]
			select {
			case p.ch <- c:
			case <-p.stop:
				c.release()
				p.err = errAbandoned
				return
			}
		} else {
			c.release()
		}
		if err != nil {
			p.err = err
			close(p.ch)
			return
		}
	}
}

// halt makes the pump drop what it reads from now on; it exits at its next
// read (the caller closes the application's connection).
func (p *pump) halt() { p.once.Do(func() { close(p.stop) }) }

// errAbandoned ends the body of an attempt that lost its stream.
var errAbandoned = errors.New("tunnel attempt abandoned")

// attemptBody is one attempt's request body. It counts what it handed to
// the transport; once abandoned it takes nothing more from the pump.
type attemptBody struct {
	watch    answerWatch // bounds the wait for the peer's answer
	p        *pump
	abandon  chan struct{}
	once     sync.Once
	mu       sync.Mutex
	pending  *chunk
	consumed atomic.Int64
}

func (b *attemptBody) init(p *pump, carry *chunk) {
	b.p, b.abandon, b.pending = p, make(chan struct{}), carry
}

func (b *attemptBody) Read(dst []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.pending == nil {
		select {
		case c, ok := <-b.p.ch:
			if !ok {
				if errors.Is(b.p.err, io.EOF) || isClosed(b.p.err) {
					return 0, io.EOF // the application half-closed: END_STREAM
				}
				return 0, b.p.err
			}
			b.pending = c
		case <-b.abandon:
			return 0, errAbandoned
		}
	}
	n := copy(dst, b.pending.b)
	b.pending.b = b.pending.b[n:]
	if len(b.pending.b) == 0 {
		b.pending.release()
		b.pending = nil
	}
	b.consumed.Add(int64(n))
	return n, nil
}

// Close abandons the attempt (the transport calls it when done with the
// body).
func (b *attemptBody) Close() error {
	b.once.Do(func() { close(b.abandon) })
	return nil
}

// leftover returns what the abandoned attempt holds but never handed on.
func (b *attemptBody) leftover() *chunk {
	b.mu.Lock()
	defer b.mu.Unlock()
	c := b.pending
	b.pending = nil
	return c
}

// Stream is an open tunnel stream.
type Stream struct {
	// Down is what the peer sends back.
	Down io.ReadCloser
	body *attemptBody

	// One allocation holds what a stream needs when its first attempt
	// succeeds, as most do.
	pump  pump
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
	case <-s.pump.done:
		if errors.Is(s.pump.err, io.EOF) || isClosed(s.pump.err) {
			return nil
		}
		return s.pump.err
	case <-s.body.abandon:
		s.pump.halt()
		return nil
	}
}

// Close releases the stream.
func (s *Stream) Close() error {
	s.pump.halt()
	return s.Down.Close()
}

// OpenStream opens a tunnel stream to authority in cluster whose request
// body is src, sent as soon as it arrives (not after the peer's answer).
//
// ctx bounds the stream's whole life. Waiting for the peer's answer is
// bounded by the dial timeout while the connection is silent, and by
// maxAnswerWait dial timeouts while it still delivers bytes (liveness.go).
func (p *Pool) OpenStream(ctx context.Context, cluster, authority string, src io.Reader) (*Stream, error) {
	pr, err := p.peer(cluster)
	if err != nil {
		return nil, err
	}
	st := &Stream{url: url.URL{Host: authority}}
	pm := &st.pump
	pm.start(src)
	ok := false
	defer func() {
		if !ok {
			pm.halt()
		}
	}()
	var carry *chunk
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
		body.init(pm, carry)
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
			carry = body.leftover()
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
