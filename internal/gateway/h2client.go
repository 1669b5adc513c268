package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// The calling gateway's side of a tunnel connection is the same h2Conn
// the inbound server runs, opened the other way: one frame reader per
// connection, writers that write their own frames and the last of a
// burst flushing. A response's DATA is written by the frame reader
// straight to the application's socket while nothing is queued for it
// (h2Body.WriteTo), as the inbound server writes a request's to the
// backend. net/http's client handed every answer from its read loop to
// the stream's reader through a pipe, and held a write buffer of the
// peer's frame size for each stream's whole life.

// clientSide is what a connection we opened keeps beyond the server's
// state; guarded by the connection's mu.
type clientSide struct {
	maxStreams uint32 // the peer's SETTINGS_MAX_CONCURRENT_STREAMS
	nextID     uint32
}

// defaultMaxStreams bounds the streams opened before the peer's SETTINGS
// tell its limit (RFC 9113 recommends at least 100).
const defaultMaxStreams = 100

var (
	errConnFull      = errors.New("http2: connection at its stream limit")
	errPeerGoingAway = errors.New("http2: peer sent GOAWAY")
	errNotProcessed  = errors.New("http2: stream not processed by the peer (GOAWAY)")
	errIDsExhausted  = errors.New("http2: stream IDs exhausted")
)

// newClientConn starts HTTP/2 on nc, a connection to a peer gateway whose
// TLS handshake is done: the preface and our SETTINGS go out, and a
// goroutine reads the peer's frames. It does not wait for the peer's
// SETTINGS — a stream's HEADERS may follow ours at once — but the
// connection closes if they do not come within handshake.
func newClientConn(nc net.Conn, cfg *h2Server, handshake time.Duration) (*h2Conn, error) {
	cfg.init()
	c := cfg.newConn(nc, nil)
	c.client = &clientSide{maxStreams: defaultMaxStreams, nextID: 1}
	_ = nc.SetDeadline(time.Now().Add(handshake))
	err := c.write(func() error {
		if _, err := c.bw.WriteString(http2.ClientPreface); err != nil {
			return err
		}
		if err := c.fr.WriteSettings(
			http2.Setting{ID: http2.SettingEnablePush, Val: 0},
			http2.Setting{ID: http2.SettingInitialWindowSize, Val: cfg.streamWindow},
			http2.Setting{ID: http2.SettingMaxFrameSize, Val: cfg.maxFrameSize},
			http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: cfg.maxHeaderBytes},
		); err != nil {
			return err
		}
		if inc := cfg.connWindow - initialWindow; inc > 0 {
			return c.fr.WriteWindowUpdate(0, inc)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if !cfg.register(c) {
		_ = nc.Close()
		return nil, errConnClosed
	}
	go c.serve()
	return c, nil
}

// unusableLocked says why the connection takes no new stream, if it
// does not. c.mu is held.
func (c *h2Conn) unusableLocked() error {
	switch {
	case c.closed:
		return errConnClosed
	case c.peerGone:
		return errPeerGoingAway
	case c.goingAway:
		return errConnClosed
	case c.client.nextID > maxWindow:
		return errIDsExhausted
	}
	return nil
}

// Reserve takes a slot for one stream, which openStream then opens, or
// Release gives back.
func (c *h2Conn) Reserve() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.unusableLocked(); err != nil {
		return err
	}
	if c.active >= int(c.client.maxStreams) {
		return errConnFull
	}
	c.active++
	return nil
}

// Release gives back a slot that opened no stream.
func (c *h2Conn) Release() {
	c.mu.Lock()
	last, peerGone := c.streamGoneLocked()
	c.mu.Unlock()
	c.afterStream(last, peerGone)
}

// Err is why the connection takes no new streams; nil while it does.
func (c *h2Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.unusableLocked()
}

// InFlight counts the streams open or reserved.
func (c *h2Conn) InFlight() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.active
}

// Close closes the connection and every stream on it.
func (c *h2Conn) Close() error {
	c.close()
	return nil
}

// ping sends a PING: the peer's answer shows it alive.
func (c *h2Conn) ping() {
	_ = c.write(func() error { return c.fr.WritePing(false, [8]byte{'l', 'i', 'v', 'e', 'n', 'e', 's', 's'}) })
}

// noCancel is a client stream's cancel: it has no context of its own.
// (Its end is told by ended instead, closed by endedLocked.)
func noCancel() {}

// openStream opens a stream on a reserved slot with a request's HEADERS
// (END_STREAM with them when end). path is empty for a CONNECT. On an
// error the slot is given back.
func (c *h2Conn) openStream(method, authority, path string, end bool) (*h2Stream, error) {
	st := &h2Stream{c: c, ctx: c.ctx, cancel: noCancel, answered: make(chan struct{}), ended: make(chan struct{})}
	st.readable = sync.NewCond(&c.mu)
	var refused error
	err := c.write(func() error {
		// IDs are taken under the write lock: HEADERS go out in the
		// order of their streams' IDs, as the protocol requires.
		c.mu.Lock()
		if refused = c.unusableLocked(); refused != nil {
			c.mu.Unlock()
			return nil
		}
		st.id = c.client.nextID
		c.client.nextID += 2
		c.maxID = st.id
		st.sendWindow = c.peerWindow
		st.recvWindow = int64(c.srv.streamWindow)
		if !c.settingsAcked {
			// Until the peer acknowledged our SETTINGS it counts the
			// protocol's default; the ACK moves the window by the
			// difference (processSettings).
			st.recvWindow = max(st.recvWindow, initialWindow)
		}
		st.sentEnd = end
		c.streams[st.id] = st
		c.mu.Unlock()
		c.hbuf.Reset()
		_ = c.henc.WriteField(hpack.HeaderField{Name: ":method", Value: method})
		if path != "" {
			_ = c.henc.WriteField(hpack.HeaderField{Name: ":scheme", Value: "https"})
			_ = c.henc.WriteField(hpack.HeaderField{Name: ":path", Value: path})
		}
		_ = c.henc.WriteField(hpack.HeaderField{Name: ":authority", Value: authority})
		return c.blockFrames(st.id, end)
	})
	switch {
	case refused != nil:
		c.Release()
		return nil, refused
	case err != nil && st.id == 0:
		c.Release() // the connection had failed already
		return nil, err
	case err != nil:
		c.finishStream(st)
		return nil, err
	}
	return st, nil
}

// processResponse handles a response's HEADERS, or its trailers.
func (c *h2Conn) processResponse(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	c.mu.Lock()
	st, ok := c.streams[id]
	if !ok {
		c.mu.Unlock()
		if id > c.maxID || id%2 == 0 {
			return protocolError("HEADERS on stream %d, which was not opened", id)
		}
		return nil // ended already: the block was decoded, keeping HPACK in step
	}
	if st.reset != nil {
		c.mu.Unlock()
		return nil
	}
	if st.status != 0 {
		// Trailers: they end the response; we keep none.
		if !f.StreamEnded() {
			c.mu.Unlock()
			return protocolError("stream %d: trailers without END_STREAM", id)
		}
		if st.recvErr == io.EOF {
			// After END_STREAM the stream is closed to the peer.
			c.mu.Unlock()
			c.resetStream(id, http2.ErrCodeStreamClosed, true)
			return nil
		}
		if st.recvErr == nil {
			st.recvErr = io.EOF
			st.readable.Broadcast()
		}
		c.mu.Unlock()
		return nil
	}
	status, err := strconv.Atoi(f.PseudoValue("status"))
	// 101 has no place in HTTP/2 (RFC 9113 §8.6), nor have the fields
	// of a connection (§8.2.2).
	bad := err != nil || status < 100 || status > 999 || status == http.StatusSwitchingProtocols ||
		f.Truncated || f.PseudoValue("method") != "" || hasConnectionFields(f)
	if !bad && status < 200 {
		// Informational: the answer is still to come.
		c.mu.Unlock()
		if f.StreamEnded() {
			c.resetStream(id, http2.ErrCodeProtocol, true)
		}
		return nil
	}
	if bad {
		c.mu.Unlock()
		c.resetStream(id, http2.ErrCodeProtocol, true)
		return nil
	}
	st.status = status
	if f.StreamEnded() {
		st.recvErr = io.EOF
	}
	st.wakeLocked()
	c.mu.Unlock()
	return nil
}

// hasConnectionFields says whether a header block carries a field
// specific to a connection, which makes an HTTP/2 message malformed.
func hasConnectionFields(f *http2.MetaHeadersFrame) bool {
	for _, hf := range f.RegularFields() {
		if connectionSpecific(hf.Name) || (hf.Name == "te" && hf.Value != "trailers") {
			return true
		}
	}
	return false
}

// refuseAboveLocked fails the streams a GOAWAY says the peer did not
// process: they may be retried elsewhere. It returns the connection's
// WINDOW_UPDATE increment due: the window their bytes held is given
// back, as what other streams read may be in it, and the streams below
// last go on. c.mu is held.
func (c *h2Conn) refuseAboveLocked(last uint32) uint32 {
	var inc uint32
	for id, st := range c.streams {
		if id > last && st.reset == nil {
			inc += c.abortLocked(st, errNotProcessed)
		}
	}
	return inc
}

// finishStream ends a stream we opened and counts it out: a RST_STREAM
// (CANCEL) tells the peer unless both sides ended it already.
func (c *h2Conn) finishStream(st *h2Stream) {
	c.mu.Lock()
	if st.finished {
		c.mu.Unlock()
		return
	}
	st.finished = true
	cancel := st.reset == nil && !(st.recvErr == io.EOF && st.sentEnd)
	if st.reset == nil {
		st.reset = errStreamEnded
		if st.recvErr == nil {
			st.recvErr = errStreamEnded
		}
	}
	st.bodyClosed = true
	inc, last, peerGone := c.retireLocked(st)
	c.mu.Unlock()
	if cancel || inc > 0 {
		_ = c.write(func() error {
			if cancel {
				if err := c.fr.WriteRSTStream(st.id, http2.ErrCodeCancel); err != nil {
					return err
				}
			}
			if inc > 0 {
				return c.fr.WriteWindowUpdate(0, inc)
			}
			return nil
		})
	}
	c.afterStream(last, peerGone)
}

// awaitAnswer waits for the stream's response HEADERS, the stream's end,
// or ctx.
func (st *h2Stream) awaitAnswer(ctx context.Context) error {
	select {
	case <-st.answered:
	case <-ctx.Done():
		return ctx.Err()
	}
	c := st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if st.status == 0 {
		return st.reset
	}
	return nil
}

// get sends a GET for path on a reserved slot and returns the answer's
// status and up to limit bytes of its body.
func (c *h2Conn) get(ctx context.Context, authority, path string, limit int64) (int, []byte, error) {
	st, err := c.openStream(http.MethodGet, authority, path, true)
	if err != nil {
		return 0, nil, err
	}
	defer c.finishStream(st)
	if err := st.awaitAnswer(ctx); err != nil {
		return 0, nil, err
	}
	body, err := readAnswer(ctx, st, limit)
	if err != nil {
		return st.status, body, fmt.Errorf("reading the answer: %w", err)
	}
	return st.status, body, nil
}

// readAnswer reads up to limit bytes of a stream's answer, until its end
// or ctx's: a peer that answers and then sends nothing more, yet keeps
// its connection alive, does not hold the reader.
func readAnswer(ctx context.Context, st *h2Stream, limit int64) ([]byte, error) {
	stop := context.AfterFunc(ctx, func() { st.c.finishStream(st) })
	body, err := io.ReadAll(io.LimitReader(&h2Body{st: st}, limit))
	if !stop() {
		err = ctx.Err()
	}
	return body, err
}
