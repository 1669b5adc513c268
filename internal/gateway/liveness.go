package gateway

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// A saturated link and a dead one look alike to a stream waiting for the
// peer's answer to its CONNECT: nothing comes back within the dial
// timeout. They differ in whether anything comes back at all. A
// connection still delivering bytes (data of other streams, window
// updates, answers to a liveness probe) is alive, only slow: the stream
// waits on, up to maxAnswerWait, and if even that runs out only the
// stream fails — the connection and the streams on it are left alone. A
// connection that delivered nothing for the dial timeout is dead: the
// stream fails and the pool drops the connection, ending the streams on
// it at once rather than after the transport's ping timeout.

// maxAnswerWait bounds the wait for a CONNECT answer on a live
// connection, in dial timeouts.
const maxAnswerWait = 6

// congestedFor is how long, in dial timeouts, a connection whose answers
// came late is passed over by new streams while a spare can be dialled.
const congestedFor = 2

// maxCongestedConns bounds the connections per peer address dialled
// because the others were congested: past it, new streams queue on them.
const maxCongestedConns = 4

// epoch anchors monotime: a monotonic clock cheap to keep in an atomic.
var epoch = time.Now()

func monotime() time.Duration { return time.Since(epoch) }

// poolConn is one pooled connection to a peer gateway and what the pool
// has seen of it.
type poolConn struct {
	cc   *h2Conn
	addr string

	lastRead       atomic.Int64 // monotime of the last byte from the peer
	congestedUntil atomic.Int64 // monotime
	probing        atomic.Bool
}

func (pc *poolConn) quiet(now time.Duration) time.Duration {
	return now - time.Duration(pc.lastRead.Load())
}

func (pc *poolConn) congested(now time.Duration) bool {
	return now < time.Duration(pc.congestedUntil.Load())
}

// probe sends the peer a PING, so that a live peer with nothing else to
// send shows it is there: its answer counts as bytes arriving. One
// probe per connection at a time.
func (pc *poolConn) probe() {
	if !pc.probing.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer pc.probing.Store(false)
		pc.cc.ping()
	}()
}

// readTracker notes when the peer's bytes arrive (below TLS, so every
// record counts, whichever stream it belongs to).
type readTracker struct {
	net.Conn
	last *atomic.Int64
}

func (r *readTracker) Read(b []byte) (int, error) {
	n, err := r.Conn.Read(b)
	if n > 0 {
		r.last.Store(int64(monotime()))
	}
	return n, err
}

// answerVerdict is why an answerWatch ended the wait.
type answerVerdict int32

const (
	waiting answerVerdict = iota
	stalled               // nothing from the peer for the dial timeout: the connection is dead
	tooSlow               // alive, but no answer within maxAnswerWait: the stream gives up
)

// answerWatch bounds the wait for the peer's answer to one CONNECT. It
// looks every half dial timeout: a connection quiet for half of it is
// probed; one quiet for all of it is stalled.
type answerWatch struct {
	pc      *poolConn
	timeout time.Duration
	start   time.Duration
	cancel  context.CancelFunc

	mu      sync.Mutex
	timer   *time.Timer
	verdict answerVerdict
	done    bool
}

func (w *answerWatch) begin(pc *poolConn, timeout time.Duration, cancel context.CancelFunc) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.pc, w.timeout, w.cancel = pc, timeout, cancel
	w.start = monotime()
	w.timer = time.AfterFunc(timeout/2, w.check)
}

func (w *answerWatch) check() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return
	}
	now := monotime()
	elapsed, quiet := now-w.start, w.pc.quiet(now)
	switch {
	case elapsed >= w.timeout && quiet >= w.timeout:
		w.verdict = stalled
	case elapsed >= maxAnswerWait*w.timeout:
		w.verdict = tooSlow
	}
	if w.verdict != waiting {
		w.done = true
		w.cancel()
		return
	}
	// Unanswered for half the dial timeout: alive or not, new streams try
	// another connection for a while.
	w.pc.congestedUntil.Store(int64(now + congestedFor*w.timeout))
	// Probe at every check the connection was quiet since the last
	// answer: probing every other one let a late timer see a live peer
	// quiet for a whole dial timeout and call it stalled.
	if quiet >= w.timeout/4 {
		w.pc.probe()
	}
	w.timer.Reset(w.timeout / 2)
}

// end stops the watch and reports whether it had ended the wait, and why.
func (w *answerWatch) end() answerVerdict {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.done = true
	w.timer.Stop()
	return w.verdict
}
