package gateway

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Server serves the inbound port's HTTP/2 connections. Tunnel streams
// are long byte pipes, not documents, so a stream's answer is written by
// the goroutine that read it from the backend, straight into the
// connection, and the last of a burst of writers flushes. net/http's
// server hands each write to its connection goroutine, which schedules it
// and flushes from a goroutine of its own: two goroutine switches on every
// answer, the larger part of the latency a gateway added at low load.
//
// It speaks what peer gateways and probes send: CONNECT streams (RFC 9113
// §8.5) and plain requests such as GET /ready. It enforces both flow
// control windows, refuses streams beyond its concurrency limit (counting
// a stream until its handler returns, so a peer resetting streams cannot
// run more handlers than that), answers PING, follows SETTINGS, and ends
// connections with GOAWAY: on Shutdown, after an idle period, and on a
// protocol error. Frames are parsed by x/net's Framer and header blocks by
// its HPACK decoder, bounded by the header list limit.
type h2Server struct {
	handler   http.Handler
	tlsConfig *tls.Config
	log       *slog.Logger

	// handshakeTimeout bounds a new connection's TLS handshake, its
	// preface and its first SETTINGS.
	handshakeTimeout time.Duration
	// idleTimeout ends a connection without streams for this long.
	idleTimeout time.Duration
	// pingInterval: a PING after this long without a frame from the peer;
	// pingTimeout: the connection is closed this long after, still
	// without one.
	pingInterval, pingTimeout time.Duration
	// writeTimeout bounds a socket write that makes no progress (a peer
	// that stopped reading).
	writeTimeout time.Duration

	maxStreams     uint32
	streamWindow   uint32 // SETTINGS_INITIAL_WINDOW_SIZE we advertise
	connWindow     uint32 // the connection's receive window
	maxFrameSize   uint32 // SETTINGS_MAX_FRAME_SIZE we advertise
	maxHeaderBytes uint32 // SETTINGS_MAX_HEADER_LIST_SIZE

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*h2Conn]struct{}
	shut      bool
}

const (
	// goAwayLinger is how long a connection told to go away keeps reading
	// once its streams are done, so requests the peer sent before it saw
	// the GOAWAY are refused (and retried elsewhere) rather than lost in
	// a reset.
	goAwayLinger = time.Second
	// initialWindow is HTTP/2's window before SETTINGS change it.
	initialWindow = 65535
	maxWindow     = math.MaxInt32
)

var (
	errStreamReset = errors.New("http2: stream reset by peer")
	errStreamEnded = errors.New("http2: stream ended")
	errConnClosed  = errors.New("http2: connection closed")
	errBodyClosed  = errors.New("http2: request body closed")
)

// peerReset is how a stream the peer reset ends; it is errStreamReset.
type peerReset struct{ code http2.ErrCode }

func (e peerReset) Error() string        { return errStreamReset.Error() + ": " + e.code.String() }
func (e peerReset) Is(target error) bool { return target == errStreamReset }

func (s *h2Server) init() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns == nil {
		s.conns = map[*h2Conn]struct{}{}
		s.listeners = map[net.Listener]struct{}{}
	}
}

// Serve accepts connections on l until Shutdown or Close, which make it
// return http.ErrServerClosed.
func (s *h2Server) Serve(l net.Listener) error {
	s.init()
	s.mu.Lock()
	if s.shut {
		s.mu.Unlock()
		return http.ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			shut := s.shut
			s.mu.Unlock()
			if shut {
				return http.ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Out of file descriptors and the like: wait, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("accepting a connection", "err", err, "retry-in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		go s.serveTLS(nc)
	}
}

func (s *h2Server) serveTLS(nc net.Conn) {
	tc := tls.Server(nc, s.tlsConfig)
	deadline := time.Now().Add(s.handshakeTimeout)
	_ = tc.SetDeadline(deadline)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		s.log.Debug("TLS handshake", "remote", nc.RemoteAddr().String(), "err", err)
		_ = nc.Close()
		return
	}
	state := tc.ConnectionState()
	if state.NegotiatedProtocol != "h2" {
		s.log.Debug("refused: not HTTP/2", "remote", nc.RemoteAddr().String(), "alpn", state.NegotiatedProtocol)
		_ = tc.Close()
		return
	}
	s.serveConn(tc, &state)
}

// serveConn serves one connection whose TLS handshake (if any) is done,
// until it closes. The first bytes must arrive before the handshake
// deadline set on nc, which is cleared once the peer's SETTINGS came.
func (s *h2Server) serveConn(nc net.Conn, state *tls.ConnectionState) {
	s.newConn(nc, state).serve()
}

// register makes c one of the connections Shutdown and Close reach —
// once its SETTINGS went out, so a GOAWAY never precedes them — or
// returns false after Shutdown or Close.
func (s *h2Server) register(c *h2Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shut {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

// Shutdown stops accepting, sends every connection a GOAWAY and waits
// until none has a stream left, or ctx ends.
func (s *h2Server) Shutdown(ctx context.Context) error {
	s.init()
	conns := s.stop()
	for _, c := range conns {
		c.goAway(http2.ErrCodeNo, nil)
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if s.idle() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// Close stops accepting and closes every connection at once.
func (s *h2Server) Close() error {
	s.init()
	for _, c := range s.stop() {
		c.close()
	}
	return nil
}

// stop stops accepting and returns the connections.
func (s *h2Server) stop() []*h2Conn {
	s.mu.Lock()
	s.shut = true
	for l := range s.listeners {
		_ = l.Close()
	}
	s.mu.Unlock()
	return s.connList()
}

func (s *h2Server) connList() []*h2Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Collect(maps.Keys(s.conns))
}

// idle reports whether no connection has a stream left.
func (s *h2Server) idle() bool {
	for _, c := range s.connList() {
		c.mu.Lock()
		busy := !c.closed && c.active > 0
		c.mu.Unlock()
		if busy {
			return false
		}
	}
	return true
}

// h2Conn is one peer connection.
type h2Conn struct {
	srv    *h2Server
	nc     net.Conn
	tls    *tls.ConnectionState
	remote string
	fr     *http2.Framer // read by serve only; written under wmu
	ctx    context.Context
	cancel context.CancelFunc

	// Writing: frames go into bw under wmu; a writer that leaves nobody
	// waiting behind it flushes.
	wmu          sync.Mutex
	bw           *bufio.Writer
	henc         *hpack.Encoder
	hbuf         bytes.Buffer
	werr         error
	deadlineSet  time.Time   // under wmu
	closing      atomic.Bool // close is flushing: deadlines stay short
	waiting      atomic.Int32
	peerMaxFrame atomic.Uint32
	// Control frames (WINDOW_UPDATE, RST_STREAM, the ACKs) never wait for
	// wmu: they queue here for whoever holds it (writeCtl).
	ctlMu      sync.Mutex
	ctl        []func() error
	ctlPending atomic.Bool

	lastRead atomic.Int64 // unix nanoseconds of the last frame read

	mu         sync.Mutex
	flow       *sync.Cond // a send window grew, or a stream or the connection ended
	streams    map[uint32]*h2Stream
	active     int    // streams whose handlers run
	maxID      uint32 // highest stream the peer opened
	sendWindow int64  // what we may still send on the connection
	peerWindow int64  // the peer's SETTINGS_INITIAL_WINDOW_SIZE
	// settingsAcked: the peer acknowledged our SETTINGS. Until then it may
	// send a new stream the protocol's default window, larger than ours.
	settingsAcked bool
	recvWindow    int64 // what the peer may still send on the connection
	recvUnacked   int64 // bytes consumed or discarded, not yet given back
	goingAway     bool  // GOAWAY sent: no new streams
	peerGone      bool  // GOAWAY received
	closed        bool
	lastActive    time.Time // when the last stream ended
	timer         *time.Timer
	pingSent      time.Time // zero when no PING is outstanding

	// client is set on a connection we opened to a peer gateway
	// (h2client.go); nil on one the server accepted.
	client *clientSide
}

func (s *h2Server) newConn(nc net.Conn, state *tls.ConnectionState) *h2Conn {
	c := &h2Conn{
		srv:        s,
		nc:         nc,
		tls:        state,
		remote:     nc.RemoteAddr().String(),
		streams:    map[uint32]*h2Stream{},
		sendWindow: initialWindow,
		peerWindow: initialWindow,
		recvWindow: int64(s.connWindow),
		lastActive: time.Now(),
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.flow = sync.NewCond(&c.mu)
	c.bw = bufio.NewWriterSize(deadlineWriter{c}, int(s.maxFrameSize)+64<<10)
	c.fr = http2.NewFramer(c.bw, bufio.NewReaderSize(nc, 32<<10))
	c.fr.SetMaxReadFrameSize(s.maxFrameSize)
	c.fr.MaxHeaderListSize = s.maxHeaderBytes
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.henc = hpack.NewEncoder(&c.hbuf)
	c.peerMaxFrame.Store(16384)
	c.lastRead.Store(time.Now().UnixNano())
	return c
}

// serve reads the connection's frames until it ends.
func (c *h2Conn) serve() {
	defer c.close()
	if c.client == nil && !c.accept() {
		return
	}
	c.readFrames()
}

// accept reads a client's preface and sends our SETTINGS.
func (c *h2Conn) accept() bool {
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c.nc, preface); err != nil || string(preface) != http2.ClientPreface {
		c.srv.log.Debug("refused: no HTTP/2 preface", "remote", c.remote)
		return false
	}
	err := c.write(func() error {
		if err := c.fr.WriteSettings(
			http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: c.srv.maxStreams},
			http2.Setting{ID: http2.SettingInitialWindowSize, Val: c.srv.streamWindow},
			http2.Setting{ID: http2.SettingMaxFrameSize, Val: c.srv.maxFrameSize},
			http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: c.srv.maxHeaderBytes},
		); err != nil {
			return err
		}
		if inc := c.srv.connWindow - initialWindow; inc > 0 {
			return c.fr.WriteWindowUpdate(0, inc)
		}
		return nil
	})
	return err == nil && c.srv.register(c)
}

// readFrames reads and handles the peer's frames until the connection
// ends.
func (c *h2Conn) readFrames() {
	first := true
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			var ce http2.ConnectionError
			switch {
			case errors.As(err, &se):
				c.mu.Lock()
				idle := se.StreamID > c.maxID
				c.mu.Unlock()
				if idle && se.Cause == nil {
					// Not a malformed header block (the framer gives those
					// their cause) but a WINDOW_UPDATE of 0 or a HEADERS
					// frame padded past its end, on a stream never opened:
					// a connection error (RFC 9113 §5.1, §6.2), where
					// resetting it would have opened its ID.
					c.goAway(http2.ErrCodeProtocol, err)
					return
				}
				// A malformed header block: the stream's ID is used.
				if c.noteStreamID(se.StreamID) != nil {
					c.goAway(http2.ErrCodeProtocol, err)
					return
				}
				c.resetStream(se.StreamID, se.Code, true)
				continue
			case errors.As(err, &ce):
				c.goAway(http2.ErrCode(ce), err)
			case errors.Is(err, http2.ErrFrameTooLarge):
				c.goAway(http2.ErrCodeFrameSize, err)
			default:
				c.srv.log.Debug("reading", "remote", c.remote, "err", err)
			}
			return
		}
		c.lastRead.Store(time.Now().UnixNano())
		if first {
			sf, ok := f.(*http2.SettingsFrame)
			if !ok || sf.IsAck() {
				c.goAway(http2.ErrCodeProtocol, errors.New("the first frame is not SETTINGS"))
				return
			}
			// Past the handshake: liveness is the PINGs' business now,
			// and writes get deadlines of their own.
			c.wmu.Lock()
			_ = c.nc.SetDeadline(time.Time{})
			c.deadlineSet = time.Time{}
			c.wmu.Unlock()
			c.armTimer()
			first = false
		}
		if err := c.process(f); err != nil {
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				c.goAway(http2.ErrCode(ce), err)
			}
			return
		}
	}
}

// connError is a connection error with what caused it.
type connError struct {
	code   http2.ErrCode
	reason string
}

func (e connError) Error() string { return fmt.Sprintf("%v: %s", e.code, e.reason) }
func (e connError) As(target any) bool {
	if t, ok := target.(*http2.ConnectionError); ok {
		*t = http2.ConnectionError(e.code)
		return true
	}
	return false
}

func protocolError(format string, args ...any) error {
	return connError{http2.ErrCodeProtocol, fmt.Sprintf(format, args...)}
}

// process handles one frame; an error ends the connection.
func (c *h2Conn) process(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		if c.client != nil {
			return c.processResponse(f)
		}
		return c.processHeaders(f)
	case *http2.DataFrame:
		return c.processData(f)
	case *http2.WindowUpdateFrame:
		return c.processWindowUpdate(f)
	case *http2.RSTStreamFrame:
		c.mu.Lock()
		idle := f.StreamID > c.maxID
		c.mu.Unlock()
		if idle {
			return protocolError("RST_STREAM on idle stream %d", f.StreamID)
		}
		c.resetStream(f.StreamID, f.ErrCode, false)
		return nil
	case *http2.SettingsFrame:
		return c.processSettings(f)
	case *http2.PingFrame:
		if f.IsAck() {
			c.mu.Lock()
			c.pingSent = time.Time{}
			c.mu.Unlock()
			return nil
		}
		c.writeCtl(func() error { return c.fr.WritePing(true, f.Data) })
		return nil
	case *http2.GoAwayFrame:
		c.mu.Lock()
		c.peerGone = true
		var inc uint32
		if c.client != nil {
			inc = c.refuseAboveLocked(f.LastStreamID)
		}
		done := c.active == 0
		c.mu.Unlock()
		if done {
			return errConnClosed
		}
		c.writeWindowUpdates(0, inc, 0)
		return nil
	case *http2.PushPromiseFrame:
		return protocolError("PUSH_PROMISE: push is not enabled")
	}
	// PRIORITY, PRIORITY_UPDATE and unknown frames carry nothing for us.
	return nil
}

// noteStreamID records a stream ID the peer used in a frame that failed
// to parse: a new one counts as opened.
func (c *h2Conn) noteStreamID(id uint32) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if id > c.maxID {
		if c.client != nil {
			return protocolError("stream %d: not opened", id)
		}
		if id%2 == 0 {
			return protocolError("stream %d: even, not a client stream", id)
		}
		c.maxID = id
	}
	return nil
}

func (c *h2Conn) processHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	c.mu.Lock()
	if st, ok := c.streams[id]; ok {
		// Trailers: they end the request; we keep none.
		if !f.StreamEnded() {
			c.mu.Unlock()
			return protocolError("stream %d: trailers without END_STREAM", id)
		}
		if st.recvErr != nil {
			violation := st.reset == nil
			c.mu.Unlock()
			if violation {
				c.resetStream(id, http2.ErrCodeStreamClosed, true)
			}
			return nil
		}
		st.recvErr = io.EOF
		st.readable.Broadcast()
		c.mu.Unlock()
		return nil
	}
	if id%2 == 0 {
		c.mu.Unlock()
		return protocolError("stream %d: HEADERS on an even stream", id)
	}
	if id <= c.maxID {
		// A stream already ended (its trailers crossed our reset): the
		// block was decoded, keeping HPACK in step, and is dropped.
		c.mu.Unlock()
		return nil
	}
	c.maxID = id
	refuse := c.goingAway || c.closed || c.active >= int(c.srv.maxStreams+c.srv.maxStreams/8)
	if !refuse {
		// Counted in the same critical section as the check: a GOAWAY
		// sent from now on covers this stream and waits for it.
		c.active++
	}
	c.mu.Unlock()
	if refuse {
		c.writeReset(id, http2.ErrCodeRefusedStream)
		return nil
	}
	req, code := c.newRequest(f)
	if f.Truncated || code != http2.ErrCodeNo || req == nil {
		switch {
		case f.Truncated:
			c.writeResponse(id, http.StatusRequestHeaderFieldsTooLarge)
		case code != http2.ErrCodeNo:
			c.writeReset(id, code)
		default:
			c.writeResponse(id, http.StatusBadRequest)
		}
		c.streamGone()
		return nil
	}

	st := &h2Stream{c: c, id: id}
	st.readable = sync.NewCond(&c.mu)
	st.ctx, st.cancel = context.WithCancel(c.ctx)
	if f.StreamEnded() {
		st.recvErr = io.EOF
		req.Body = http.NoBody
		req.ContentLength = 0
	} else {
		req.Body = &h2Body{st: st}
	}
	c.mu.Lock()
	if c.closed {
		c.active--
		c.mu.Unlock()
		st.cancel()
		return errConnClosed
	}
	st.sendWindow = c.peerWindow
	st.recvWindow = int64(c.srv.streamWindow)
	if !c.settingsAcked {
		st.recvWindow = max(st.recvWindow, initialWindow)
	}
	c.streams[id] = st
	c.mu.Unlock()
	go c.runHandler(st, req.WithContext(st.ctx))
	return nil
}

// newRequest builds a request from a header block; a stream error code
// when it is malformed, or a nil request for a 400.
func (c *h2Conn) newRequest(f *http2.MetaHeadersFrame) (*http.Request, http2.ErrCode) {
	method, authority := f.PseudoValue("method"), f.PseudoValue("authority")
	path, scheme := f.PseudoValue("path"), f.PseudoValue("scheme")
	if f.PseudoValue("protocol") != "" || f.PseudoValue("status") != "" {
		return nil, http2.ErrCodeProtocol // extended CONNECT is not offered
	}
	if method == "" {
		return nil, http2.ErrCodeProtocol
	}
	req := &http.Request{
		Method:        method,
		Proto:         "HTTP/2.0",
		ProtoMajor:    2,
		Header:        make(http.Header, len(f.Fields)),
		Host:          authority,
		RemoteAddr:    c.remote,
		TLS:           c.tls,
		ContentLength: -1,
	}
	if method == http.MethodConnect {
		// RFC 9113 §8.5: :authority only.
		if authority == "" || path != "" || scheme != "" {
			return nil, http2.ErrCodeProtocol
		}
		req.URL = &url.URL{Host: authority}
		req.RequestURI = authority
	} else {
		if path == "" || scheme == "" {
			return nil, http2.ErrCodeProtocol
		}
		u, err := url.ParseRequestURI(path)
		if err != nil {
			return nil, http2.ErrCodeNo
		}
		req.URL = u
		req.RequestURI = path
	}
	for _, hf := range f.RegularFields() {
		if connectionSpecific(hf.Name) {
			return nil, http2.ErrCodeProtocol // RFC 9113 §8.2.2
		}
		switch hf.Name {
		case "te":
			if hf.Value != "trailers" {
				return nil, http2.ErrCodeProtocol
			}
		case "content-length":
			n, err := strconv.ParseInt(hf.Value, 10, 64)
			if err != nil || n < 0 {
				return nil, http2.ErrCodeProtocol
			}
			req.ContentLength = n
		}
		k := http.CanonicalHeaderKey(hf.Name)
		req.Header[k] = append(req.Header[k], hf.Value)
	}
	return req, http2.ErrCodeNo
}

// connectionSpecific reports whether a (lower-case) header field is one
// HTTP/2 forbids (RFC 9113 §8.2.2).
func connectionSpecific(name string) bool {
	switch name {
	case "connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade":
		return true
	}
	return false
}

func (c *h2Conn) processData(f *http2.DataFrame) error {
	id, n := f.StreamID, int64(f.Length)
	data := f.Data()
	c.mu.Lock()
	if n > c.recvWindow {
		c.mu.Unlock()
		return connError{http2.ErrCodeFlowControl, fmt.Sprintf("DATA of %d bytes, %d in the connection's window", n, c.recvWindow)}
	}
	c.recvWindow -= n
	st, ok := c.streams[id]
	if !ok {
		if id > c.maxID || (c.client != nil && id%2 == 0) {
			c.mu.Unlock()
			return protocolError("DATA on idle stream %d", id)
		}
		// A stream already ended: its bytes are dropped, the window
		// given back.
		inc := c.releaseLocked(n)
		c.mu.Unlock()
		c.writeWindowUpdates(0, inc, 0)
		return nil
	}
	if st.recvErr != nil || st.bodyClosed {
		// After END_STREAM that is the peer's error; after a reset or
		// the body's Close the bytes are just dropped.
		violation := st.reset == nil && st.recvErr == io.EOF
		inc := c.releaseLocked(n)
		c.mu.Unlock()
		if violation {
			c.resetStream(id, http2.ErrCodeStreamClosed, true)
		}
		c.writeWindowUpdates(0, inc, 0)
		return nil
	}
	if c.client != nil && st.status == 0 {
		// DATA before the response's HEADERS.
		inc := c.releaseLocked(n)
		c.mu.Unlock()
		c.resetStream(id, http2.ErrCodeProtocol, true)
		c.writeWindowUpdates(0, inc, 0)
		return nil
	}
	if n > st.recvWindow {
		inc := c.releaseLocked(n)
		c.mu.Unlock()
		c.resetStream(id, http2.ErrCodeFlowControl, true)
		c.writeWindowUpdates(0, inc, 0)
		return nil
	}
	st.recvWindow -= n
	// Padding is consumed at once, from both windows.
	consumed := n - int64(len(data))
	if len(data) > 0 && st.sink != nil && st.buf.len() == 0 && !st.sinkWriting {
		st.sinkBusy = true
		c.mu.Unlock()
		m := st.sink.writeNow(data)
		c.mu.Lock()
		st.sinkBusy = false
		st.sinkWritten += int64(m)
		data = data[m:]
		consumed += int64(m)
		if st.bodyClosed || st.reset != nil {
			consumed += int64(len(data)) // ended meanwhile: the rest is dropped
			data = nil
		}
	}
	st.buf.write(data)
	st.recvUnacked += consumed
	streamInc := st.updateLocked()
	inc := c.releaseLocked(consumed)
	if f.StreamEnded() && st.recvErr == nil {
		st.recvErr = io.EOF
	}
	st.readable.Broadcast()
	c.mu.Unlock()
	c.writeWindowUpdates(id, inc, streamInc)
	return nil
}

// windowRefresh is the least a WINDOW_UPDATE gives back. Updates go out
// as soon as that much was consumed, as net/http's do: besides keeping
// the sender's window open, they are what a peer sees of a connection
// whose other direction is saturated, and it tells a slow connection
// from a dead one by bytes arriving (liveness.go).
const windowRefresh = 4 << 10

// releaseLocked gives n bytes of the connection's window back and
// returns the WINDOW_UPDATE increment due, if any.
func (c *h2Conn) releaseLocked(n int64) uint32 {
	c.recvUnacked += n
	return c.connUpdateLocked()
}

func (c *h2Conn) connUpdateLocked() uint32 {
	if c.recvUnacked < windowRefresh {
		return 0
	}
	inc := c.recvUnacked
	c.recvUnacked = 0
	c.recvWindow += inc
	return uint32(inc)
}

func (c *h2Conn) processWindowUpdate(f *http2.WindowUpdateFrame) error {
	inc := int64(f.Increment)
	c.mu.Lock()
	if f.StreamID == 0 {
		defer c.mu.Unlock()
		if c.sendWindow+inc > maxWindow {
			return connError{http2.ErrCodeFlowControl, "connection window above 2^31-1"}
		}
		c.sendWindow += inc
		c.flow.Broadcast()
		return nil
	}
	st, ok := c.streams[f.StreamID]
	switch {
	case !ok && f.StreamID > c.maxID:
		c.mu.Unlock()
		return protocolError("WINDOW_UPDATE on idle stream %d", f.StreamID)
	case !ok:
		c.mu.Unlock()
	case st.sendWindow+inc > maxWindow:
		c.mu.Unlock()
		c.resetStream(f.StreamID, http2.ErrCodeFlowControl, true)
	default:
		st.sendWindow += inc
		c.flow.Broadcast()
		c.mu.Unlock()
	}
	return nil
}

func (c *h2Conn) processSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		// From here on the peer counts new streams from our window, and
		// has moved the open ones' windows by the difference (RFC 9113
		// 6.9.3: DATA sent before it saw our SETTINGS may exceed them).
		c.mu.Lock()
		if !c.settingsAcked {
			c.settingsAcked = true
			if d := initialWindow - int64(c.srv.streamWindow); d > 0 {
				for _, st := range c.streams {
					st.recvWindow -= d
				}
			}
		}
		c.mu.Unlock()
		return nil
	}
	var tableSize *uint32
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingInitialWindowSize:
			c.mu.Lock()
			delta := int64(s.Val) - c.peerWindow
			c.peerWindow = int64(s.Val)
			for _, st := range c.streams {
				st.sendWindow += delta
				if st.sendWindow > maxWindow {
					c.mu.Unlock()
					return connError{http2.ErrCodeFlowControl, "a stream's window above 2^31-1"}
				}
			}
			c.flow.Broadcast()
			c.mu.Unlock()
		case http2.SettingEnablePush:
			if c.client != nil && s.Val != 0 {
				// A server may only say 0 (RFC 9113 §6.5.2).
				return protocolError("SETTINGS_ENABLE_PUSH %d from a server", s.Val)
			}
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame.Store(s.Val)
		case http2.SettingMaxConcurrentStreams:
			if c.client != nil {
				c.mu.Lock()
				c.client.maxStreams = s.Val
				c.mu.Unlock()
			}
		case http2.SettingHeaderTableSize:
			v := s.Val
			tableSize = &v
		}
		return nil
	})
	if err != nil {
		return err
	}
	c.writeCtl(func() error {
		if tableSize != nil {
			c.henc.SetMaxDynamicTableSizeLimit(*tableSize)
		}
		return c.fr.WriteSettingsAck()
	})
	return nil
}

// deadlineWriter is what the connection's bufio.Writer writes to, under
// wmu: every socket write moves the write deadline on (at most every
// quarter of the timeout), so a write that makes no progress fails after
// between 3/4 of writeTimeout and all of it, and a connection whose
// writes keep progressing never does — whoever's frames the buffer
// happens to flush.
type deadlineWriter struct{ c *h2Conn }

func (d deadlineWriter) Write(p []byte) (int, error) {
	c := d.c
	if wt := c.srv.writeTimeout; wt > 0 && !c.closing.Load() {
		if now := time.Now(); now.Sub(c.deadlineSet) > wt/4 {
			c.deadlineSet = now
			_ = c.nc.SetWriteDeadline(now.Add(wt))
		}
	}
	return c.nc.Write(p)
}

// write runs fn, which writes frames, under the write lock; the writer
// that leaves nobody waiting flushes. A failed write closes the
// connection.
func (c *h2Conn) write(fn func() error) error {
	c.waiting.Add(1)
	c.wmu.Lock()
	err := c.werr
	if err == nil {
		err = fn()
		if err == nil && c.ctlPending.Load() {
			err = c.runCtlLocked()
		}
		if c.waiting.Add(-1) == 0 && err == nil {
			err = c.bw.Flush()
		}
		if err != nil {
			c.werr = err
		}
	} else {
		c.waiting.Add(-1)
	}
	c.wmu.Unlock()
	if err != nil {
		// Closing unblocks the reader, the writers and the handlers.
		_ = c.nc.Close()
		return err
	}
	c.tryCtl()
	return nil
}

// writeCtl sends a control frame without waiting for the write lock: if
// a writer holds it, fn goes out with that writer's frames. The frame
// reader sends WINDOW_UPDATEs, ACKs and resets this way. Were it to wait
// for the lock while a writer waits for the socket, it would stop
// reading; with both sides' connections saturated both directions, the
// peer's reader would stop too, and neither socket would drain again
// (TestBothDirectionsSaturatedKeepMoving).
func (c *h2Conn) writeCtl(fn func() error) {
	c.ctlMu.Lock()
	c.ctl = append(c.ctl, fn)
	c.ctlPending.Store(true)
	c.ctlMu.Unlock()
	c.tryCtl()
}

// tryCtl sends what writeCtl queued if the write lock is free. A holder
// that took the lock before fn was queued looks again after it lets go
// (write), so nothing queued is left behind.
func (c *h2Conn) tryCtl() {
	for c.ctlPending.Load() && c.wmu.TryLock() {
		err := c.werr
		if err == nil {
			err = c.runCtlLocked()
			if err == nil && c.waiting.Load() == 0 {
				err = c.bw.Flush()
			}
			if err != nil {
				c.werr = err
			}
		}
		c.wmu.Unlock()
		if err != nil {
			_ = c.nc.Close()
			return
		}
	}
}

// runCtlLocked writes the queued control frames, in order; under wmu.
func (c *h2Conn) runCtlLocked() error {
	c.ctlMu.Lock()
	fns := c.ctl
	c.ctl = nil
	c.ctlPending.Store(false)
	c.ctlMu.Unlock()
	for _, fn := range fns {
		if err := fn(); err != nil {
			return err
		}
	}
	return nil
}

// writeReset sends RST_STREAM, without waiting for the write lock.
func (c *h2Conn) writeReset(id uint32, code http2.ErrCode) {
	c.writeCtl(func() error { return c.fr.WriteRSTStream(id, code) })
}

// writeWindowUpdates gives the peer window back on the connection and on
// stream id, without waiting for the write lock.
func (c *h2Conn) writeWindowUpdates(id uint32, connInc, streamInc uint32) {
	if connInc == 0 && streamInc == 0 {
		return
	}
	c.writeCtl(func() error {
		if connInc > 0 {
			if err := c.fr.WriteWindowUpdate(0, connInc); err != nil {
				return err
			}
		}
		if streamInc > 0 {
			return c.fr.WriteWindowUpdate(id, streamInc)
		}
		return nil
	})
}

// writeResponse answers a stream that gets no handler with an empty
// response, without waiting for the write lock.
func (c *h2Conn) writeResponse(id uint32, status int) {
	c.writeCtl(func() error { return c.headerFrames(id, status, nil, true) })
}

// writeHeaders sends a response's header block.
func (c *h2Conn) writeHeaders(id uint32, status int, h http.Header, end bool) error {
	return c.write(func() error { return c.headerFrames(id, status, h, end) })
}

// headerFrames writes a response's header block, in CONTINUATION frames
// past the peer's frame size; under wmu.
func (c *h2Conn) headerFrames(id uint32, status int, h http.Header, end bool) error {
	c.hbuf.Reset()
	_ = c.henc.WriteField(hpack.HeaderField{Name: ":status", Value: strconv.Itoa(status)})
	c.encodeFields(h)
	return c.blockFrames(id, end)
}

// encodeFields adds h's fields to the header block being encoded, but
// for those HTTP/2 forbids; under wmu.
func (c *h2Conn) encodeFields(h http.Header) {
	for k, vv := range h {
		name := strings.ToLower(k)
		if !httpguts.ValidHeaderFieldName(k) || connectionSpecific(name) {
			continue
		}
		for _, v := range vv {
			if httpguts.ValidHeaderFieldValue(v) {
				_ = c.henc.WriteField(hpack.HeaderField{Name: name, Value: v})
			}
		}
	}
}

// blockFrames writes the encoded header block, in CONTINUATION frames
// past the peer's frame size; under wmu.
func (c *h2Conn) blockFrames(id uint32, end bool) error {
	block := c.hbuf.Bytes()
	limit := int(c.peerMaxFrame.Load())
	frag := block[:min(len(block), limit)]
	block = block[len(frag):]
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: frag, EndStream: end, EndHeaders: len(block) == 0}); err != nil {
		return err
	}
	for len(block) > 0 {
		frag = block[:min(len(block), limit)]
		block = block[len(frag):]
		if err := c.fr.WriteContinuation(id, len(block) == 0, frag); err != nil {
			return err
		}
	}
	return nil
}

// resetStream ends a stream at once: its handler's reads and writes
// fail, its context is cancelled. send says whether to tell the peer.
func (c *h2Conn) resetStream(id uint32, code http2.ErrCode, send bool) {
	c.mu.Lock()
	st, ok := c.streams[id]
	var inc uint32
	if ok && st.reset == nil {
		var err error = http2.StreamError{StreamID: id, Code: code}
		if !send {
			err = peerReset{code}
		}
		inc = c.abortLocked(st, err)
	}
	c.mu.Unlock()
	if send && id != 0 {
		c.writeReset(id, code)
	}
	c.writeWindowUpdates(0, inc, 0)
}

// aLongTimeAgo is a deadline already past: it interrupts a blocked call.
var aLongTimeAgo = time.Unix(1, 0)

// abortLocked ends a stream with err: its reads and writes fail with it,
// its context is cancelled and whoever waits on it wakes. It returns the
// connection's WINDOW_UPDATE increment due for the bytes it dropped.
// c.mu is held.
func (c *h2Conn) abortLocked(st *h2Stream, err error) uint32 {
	st.reset = err
	var inc uint32
	if st.recvErr != io.EOF {
		// What arrived in full stays readable (RFC 9113 §8.1: a server
		// may reset a stream after its complete response).
		st.recvErr = err
		inc = c.releaseLocked(int64(st.buf.discard()))
		if st.sinkConn != nil {
			// A write of the stream's bytes to its socket may wait for
			// a reader that does not read: it fails now, as the stream
			// did, so whoever copies ends that socket as failed.
			_ = st.sinkConn.SetWriteDeadline(aLongTimeAgo)
		}
	}
	st.cancel()
	st.wakeLocked()
	c.flow.Broadcast()
	return inc
}

// retireLocked takes an ended stream out of the connection: the window
// its unread bytes held is given back (the increment due is returned), it
// leaves the streams and is counted out (last and peerGone as
// streamGoneLocked says), and whoever waits on it wakes. c.mu is held.
func (c *h2Conn) retireLocked(st *h2Stream) (inc uint32, last, peerGone bool) {
	inc = c.releaseLocked(int64(st.buf.discard()))
	delete(c.streams, st.id)
	last, peerGone = c.streamGoneLocked()
	st.cancel()
	st.wakeLocked()
	c.flow.Broadcast()
	return inc, last, peerGone
}

// goAway tells the peer no new streams will be served; the connection
// closes once its streams are done. A non-zero code closes it now.
func (c *h2Conn) goAway(code http2.ErrCode, cause error) {
	c.mu.Lock()
	if c.closed || (c.goingAway && code == http2.ErrCodeNo) {
		c.mu.Unlock()
		return
	}
	c.goingAway = true
	last := c.maxID
	idle := c.active == 0
	c.mu.Unlock()
	var debug []byte
	if cause != nil {
		c.srv.log.Debug("connection error", "remote", c.remote, "code", code.String(), "err", cause)
		debug = []byte(cause.Error())
	}
	_ = c.write(func() error { return c.fr.WriteGoAway(last, code, debug) })
	if code != http2.ErrCodeNo {
		c.close()
		return
	}
	if idle {
		c.lingerThenClose()
	}
}

func (c *h2Conn) lingerThenClose() {
	time.AfterFunc(goAwayLinger, func() {
		c.mu.Lock()
		idle := c.active == 0
		c.mu.Unlock()
		if idle { // else the last stream to end comes back here
			c.close()
		}
	})
}

// streamGone counts out a stream that got no handler, and ends the
// connection if it was the last one after a GOAWAY.
func (c *h2Conn) streamGone() {
	c.mu.Lock()
	last, peerGone := c.streamGoneLocked()
	c.mu.Unlock()
	c.afterStream(last, peerGone)
}

// streamGoneLocked counts a stream out; last says it was the last after
// a GOAWAY, peerGone whose.
func (c *h2Conn) streamGoneLocked() (last, peerGone bool) {
	c.active--
	c.lastActive = time.Now()
	return c.active == 0 && (c.goingAway || c.peerGone), c.peerGone
}

// afterStream ends the connection once its last stream ended after a
// GOAWAY: at once if the peer sent it, after the linger if we did.
func (c *h2Conn) afterStream(last, peerGone bool) {
	switch {
	case !last:
	case peerGone:
		c.close()
	default:
		c.lingerThenClose()
	}
}

// close ends the connection and every stream on it.
func (c *h2Conn) close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	for _, st := range c.streams {
		if st.reset == nil {
			// Its reads and writes fail but for an answer that arrived
			// in full: that stays readable. No window is owed any more.
			// abortLocked cancels and wakes it too.
			_ = c.abortLocked(st, errConnClosed)
			continue
		}
		st.cancel()
		st.wakeLocked()
	}
	c.flow.Broadcast()
	if c.timer != nil {
		c.timer.Stop()
	}
	c.mu.Unlock()
	c.cancel()
	// Frames a writer left for the next one to flush (the last answer,
	// an END_STREAM, a GOAWAY) go out first, within a second: the short
	// deadline also frees a writer stuck on a peer that reads nothing.
	c.closing.Store(true)
	_ = c.nc.SetWriteDeadline(time.Now().Add(time.Second))
	c.wmu.Lock()
	if c.werr == nil {
		_ = c.bw.Flush()
		c.werr = errConnClosed
	}
	c.wmu.Unlock()
	_ = c.nc.Close()
	c.srv.mu.Lock()
	delete(c.srv.conns, c)
	c.srv.mu.Unlock()
}

// armTimer starts the connection's one timer, which checks idleness and
// liveness.
func (c *h2Conn) armTimer() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.timer = time.AfterFunc(c.nextCheckLocked(time.Now()), c.check)
}

func (c *h2Conn) nextCheckLocked(now time.Time) time.Duration {
	next := time.Duration(math.MaxInt64)
	if c.srv.idleTimeout > 0 && c.active == 0 {
		next = min(next, c.lastActive.Add(c.srv.idleTimeout).Sub(now))
	}
	if c.srv.pingInterval > 0 {
		if !c.pingSent.IsZero() {
			next = min(next, c.pingSent.Add(c.srv.pingTimeout).Sub(now))
		} else {
			next = min(next, time.Unix(0, c.lastRead.Load()).Add(c.srv.pingInterval).Sub(now))
		}
	}
	if next == time.Duration(math.MaxInt64) {
		next = time.Hour
	}
	return max(next, 10*time.Millisecond)
}

func (c *h2Conn) check() {
	now := time.Now()
	lastRead := time.Unix(0, c.lastRead.Load())
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	if !c.pingSent.IsZero() && lastRead.After(c.pingSent) {
		c.pingSent = time.Time{} // anything read shows the peer alive
	}
	var ping, dead, idle bool
	switch {
	case c.srv.pingInterval > 0 && !c.pingSent.IsZero() && now.Sub(c.pingSent) >= c.srv.pingTimeout:
		dead = true
	case c.srv.pingInterval > 0 && c.pingSent.IsZero() && now.Sub(lastRead) >= c.srv.pingInterval:
		ping = true
		c.pingSent = now
	}
	if c.srv.idleTimeout > 0 && c.active == 0 && !c.goingAway && now.Sub(c.lastActive) >= c.srv.idleTimeout {
		idle = true
	}
	c.timer.Reset(c.nextCheckLocked(now))
	c.mu.Unlock()
	switch {
	case dead:
		c.srv.log.Debug("closing: no answer to PING", "remote", c.remote)
		c.close()
	case idle:
		c.goAway(http2.ErrCodeNo, nil)
	}
	if ping {
		go func() {
			_ = c.write(func() error { return c.fr.WritePing(false, [8]byte{'b', 'a', 'c', 'k', 'b', 'o', 'n', 'e'}) })
		}()
	}
}

// runHandler serves one stream and ends it.
func (c *h2Conn) runHandler(st *h2Stream, req *http.Request) {
	w := &h2ResponseWriter{st: st, header: http.Header{}}
	panicked := true
	defer func() {
		if panicked {
			if r := recover(); r != nil && r != http.ErrAbortHandler {
				c.srv.log.Error("handler panic", "remote", c.remote, "panic", r)
			}
		}
		c.endStream(st, w, panicked)
	}()
	c.srv.handler.ServeHTTP(w, req)
	panicked = false
}

// endStream ends a stream whose handler returned: the response is ended
// (or the stream reset after a panic) and, if the peer is still sending,
// the stream is reset with NO_ERROR, as RFC 9113 §8.1 allows.
func (c *h2Conn) endStream(st *h2Stream, w *h2ResponseWriter, panicked bool) {
	c.mu.Lock()
	reset := st.reset != nil
	stillReceiving := st.recvErr == nil
	ended := st.sentEnd // CloseWrite ended the answer
	if !reset {
		st.reset = errStreamEnded
		st.recvErr = errStreamEnded
	}
	inc, last, peerGone := c.retireLocked(st)
	c.mu.Unlock()

	// The stream's last frames, and the window its unread bytes held,
	// go out in one flush.
	_ = c.write(func() error {
		var err error
		switch {
		case reset:
		case panicked:
			err = c.fr.WriteRSTStream(st.id, http2.ErrCodeInternal)
		default:
			switch {
			case !w.sentHeader:
				w.sentHeader = true
				err = c.headerFrames(st.id, w.statusCode(), w.header, true)
			case !ended:
				err = c.fr.WriteData(st.id, true, nil)
			}
			if err == nil && stillReceiving {
				err = c.fr.WriteRSTStream(st.id, http2.ErrCodeNo)
			}
		}
		if err == nil && inc > 0 {
			err = c.fr.WriteWindowUpdate(0, inc)
		}
		return err
	})
	c.afterStream(last, peerGone)
}

// h2Stream is one stream's state, guarded by its connection's mu.
type h2Stream struct {
	c        *h2Conn
	id       uint32
	ctx      context.Context
	cancel   context.CancelFunc
	readable *sync.Cond

	buf         chunkQueue
	recvErr     error // io.EOF after END_STREAM; the reset's error
	recvWindow  int64 // what the peer may still send on the stream
	recvUnacked int64
	bodyClosed  bool
	sendWindow  int64
	reset       error // set when the stream ended: no more frames for it

	// The body's WriteTo destination, when it is a socket: the frame
	// reader writes arriving DATA to it itself while nothing is queued
	// (sinkWriting: WriteTo is writing queued bytes; sinkBusy: the frame
	// reader is writing).
	sink        *sinkSocket
	sinkConn    net.Conn // WriteTo's destination, while it runs, if a connection
	sinkWriting bool
	sinkBusy    bool
	sinkWritten int64 // what the frame reader wrote to sink

	// A stream we opened (h2client.go): answered is closed when the
	// response's HEADERS came or the stream ended without them.
	answered chan struct{}
	// ended, on a stream we opened, is closed when the stream was reset
	// or retired: nothing more goes out on it.
	ended       chan struct{}
	endedClosed bool
	status      int  // the response's; 0 until it came
	sentEnd     bool // END_STREAM sent
	finished    bool // counted out of the connection
}

// wakeLocked wakes whoever waits on the stream: readers, and a request
// waiting for its answer. c.mu is held.
func (st *h2Stream) wakeLocked() {
	st.readable.Broadcast()
	if st.ended != nil && !st.endedClosed && st.reset != nil {
		st.endedClosed = true
		close(st.ended)
	}
	if st.answered != nil && (st.status != 0 || st.reset != nil) {
		select {
		case <-st.answered:
		default:
			close(st.answered)
		}
	}
}

// updateLocked gives the stream's consumed bytes back to its window and
// returns the WINDOW_UPDATE increment due, if any. c.mu is held.
func (st *h2Stream) updateLocked() uint32 {
	if st.recvErr != nil || st.recvUnacked < windowRefresh {
		return 0
	}
	inc := st.recvUnacked
	st.recvUnacked = 0
	st.recvWindow += inc
	return uint32(inc)
}

// writeData sends p in DATA frames as the flow control windows allow.
func (st *h2Stream) writeData(p []byte) (int, error) { return st.send(p, false) }

// send sends p in DATA frames as the flow control windows allow, the
// last one with END_STREAM if end (an empty one when p is).
func (st *h2Stream) send(p []byte, end bool) (int, error) {
	c := st.c
	written := 0
	for len(p) > 0 || end {
		c.mu.Lock()
		var n int64
		for {
			if st.reset != nil {
				err := st.reset
				c.mu.Unlock()
				return written, err
			}
			if len(p) == 0 {
				// An empty END_STREAM takes no window, and goes out
				// even when a SETTINGS made the window negative.
				n = 0
				break
			}
			n = min(int64(len(p)), int64(c.peerMaxFrame.Load()), st.sendWindow, c.sendWindow)
			if n > 0 {
				break
			}
			c.flow.Wait()
		}
		st.sendWindow -= n
		c.sendWindow -= n
		last := end && n == int64(len(p))
		st.sentEnd = last
		c.mu.Unlock()
		ran := false
		err := c.write(func() error {
			ran = true
			// The peer's frame size may have shrunk since n was cut
			// (its SETTINGS acknowledged meanwhile): the window is
			// taken, the frames follow the size now.
			q := p[:n]
			for {
				k := min(len(q), int(c.peerMaxFrame.Load()))
				if err := c.fr.WriteData(st.id, last && k == len(q), q[:k]); err != nil {
					return err
				}
				if q = q[k:]; len(q) == 0 {
					return nil
				}
			}
		})
		if err != nil {
			if ran {
				// The frames may have reached the socket in part before
				// the write failed: their bytes count as handed on, so a
				// stream is never sent again elsewhere (early.go) with
				// bytes the peer may have had.
				written += int(n)
			}
			return written, err
		}
		written += int(n)
		p = p[n:]
		if last {
			break
		}
	}
	return written, nil
}

// h2Body is a request body: the stream's DATA as it arrives.
type h2Body struct{ st *h2Stream }

// Read returns the stream's bytes as they arrive. The window the bytes
// of earlier Reads took is given back at the start of the next: by then
// the caller has passed them on, and the update does not delay them.
func (b *h2Body) Read(p []byte) (int, error) {
	n, _, err := b.read(p, false)
	return n, err
}

// read is Read. With p nil it takes a pooled chunk for the bytes once
// they are there, and marks them as being written to the sink until
// WriteTo clears sinkWriting.
func (b *h2Body) read(p []byte, forSink bool) (int, *chunk, error) {
	st := b.st
	c := st.c
	c.mu.Lock()
	connInc := c.connUpdateLocked()
	streamInc := st.updateLocked()
	if connInc > 0 || streamInc > 0 {
		c.mu.Unlock()
		c.writeWindowUpdates(st.id, connInc, streamInc)
		c.mu.Lock()
	}
	for st.buf.len() == 0 && st.recvErr == nil && !st.bodyClosed {
		st.readable.Wait()
	}
	if st.bodyClosed {
		c.mu.Unlock()
		return 0, nil, errBodyClosed
	}
	if st.buf.len() == 0 {
		err := st.recvErr
		c.mu.Unlock()
		return 0, nil, err
	}
	var ch *chunk
	if p == nil {
		ch = bufferPool.Get().(*chunk)
		p = ch.buf
	}
	n := st.buf.read(p)
	c.recvUnacked += int64(n)
	st.recvUnacked += int64(n)
	st.sinkWriting = forSink
	c.mu.Unlock()
	return n, ch, nil
}

// WriteTo copies the stream's bytes to w as they arrive, in a pooled
// chunk taken only while there are bytes to write: a stream waiting for
// its peer holds no buffer. When w is a plain socket, the frame reader
// writes arriving DATA to it itself while nothing is queued for it and
// the socket takes the bytes at once (writeNow): the bytes reach it
// without a goroutine hand-off. What the socket does not take at once is
// queued and written here, in order.
func (b *h2Body) WriteTo(w io.Writer) (written int64, err error) {
	st := b.st
	c := st.c
	c.mu.Lock()
	st.sink = newSinkSocket(w)
	st.sinkConn, _ = w.(net.Conn)
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		st.sink = nil
		st.sinkConn = nil
		st.sinkWriting = false
		for st.sinkBusy {
			st.readable.Wait()
		}
		written += st.sinkWritten
		c.mu.Unlock()
	}()
	return copyChunks(sinkWriter{w, st}, func() (*chunk, int, error) {
		n, ch, err := b.read(nil, true)
		return ch, n, err
	})
}

// sinkWriter writes a body's bytes for WriteTo and clears the mark the
// read set: they are no longer being written.
type sinkWriter struct {
	w  io.Writer
	st *h2Stream
}

func (s sinkWriter) Write(p []byte) (int, error) {
	n, err := s.w.Write(p)
	s.st.c.mu.Lock()
	s.st.sinkWriting = false
	s.st.c.mu.Unlock()
	return n, err
}

func (b *h2Body) Close() error {
	st := b.st
	c := st.c
	c.mu.Lock()
	st.bodyClosed = true
	inc := c.releaseLocked(int64(st.buf.discard()))
	st.readable.Broadcast()
	c.mu.Unlock()
	c.writeWindowUpdates(0, inc, 0)
	return nil
}

// h2ResponseWriter is a stream's http.ResponseWriter. Writes go out at
// once: there is nothing to buffer in a tunnel.
type h2ResponseWriter struct {
	st         *h2Stream
	header     http.Header
	status     int
	sentHeader bool
}

func (w *h2ResponseWriter) Header() http.Header { return w.header }

func (w *h2ResponseWriter) WriteHeader(code int) {
	if w.sentHeader || w.status != 0 || code < 200 {
		return // informational responses are not sent
	}
	if code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	w.status = code
}

func (w *h2ResponseWriter) statusCode() int {
	if w.status == 0 {
		return http.StatusOK
	}
	return w.status
}

// sendHeader sends the header block, once.
func (w *h2ResponseWriter) sendHeader() error {
	if w.sentHeader {
		return nil
	}
	w.sentHeader = true
	st := w.st
	st.c.mu.Lock()
	err := st.reset
	st.c.mu.Unlock()
	if err != nil {
		return err
	}
	return st.c.writeHeaders(st.id, w.statusCode(), w.header, false)
}

func (w *h2ResponseWriter) Write(p []byte) (int, error) {
	if err := w.sendHeader(); err != nil {
		return 0, err
	}
	return w.st.writeData(p)
}

func (w *h2ResponseWriter) Flush() { _ = w.FlushError() }

// CloseWrite ends the answer (END_STREAM) while the request may go on,
// as a TCP half-close does; the handler's return then only ends the
// stream's receiving side.
func (w *h2ResponseWriter) CloseWrite() error {
	if err := w.sendHeader(); err != nil {
		return err
	}
	_, err := w.st.send(nil, true)
	return err
}

// FlushError sends the header if it was not; writes are never held back.
func (w *h2ResponseWriter) FlushError() error {
	if err := w.sendHeader(); err != nil {
		return err
	}
	w.st.c.mu.Lock()
	defer w.st.c.mu.Unlock()
	return w.st.reset
}

// chunkQueue holds a stream's received bytes in pooled chunks.
type chunkQueue struct {
	chunks []*chunk
	size   int
}

func (q *chunkQueue) len() int { return q.size }

func (q *chunkQueue) write(p []byte) {
	q.size += len(p)
	for len(p) > 0 {
		if n := len(q.chunks); n > 0 {
			// The last chunk's b ends inside its buf: fill up to its end.
			last := q.chunks[n-1]
			if m := copy(last.b[len(last.b):cap(last.b)], p); m > 0 {
				last.b = last.b[:len(last.b)+m]
				p = p[m:]
				continue
			}
		}
		c := bufferPool.Get().(*chunk)
		m := copy(c.buf, p)
		c.b = c.buf[:m]
		p = p[m:]
		q.chunks = append(q.chunks, c)
	}
}

func (q *chunkQueue) read(p []byte) int {
	n := 0
	for n < len(p) && len(q.chunks) > 0 {
		c := q.chunks[0]
		m := copy(p[n:], c.b)
		c.b = c.b[m:]
		n += m
		if len(c.b) == 0 {
			c.release()
			q.chunks[0] = nil
			q.chunks = q.chunks[1:]
		}
	}
	q.size -= n
	if len(q.chunks) == 0 {
		q.chunks = nil
	}
	return n
}

// discard drops what is held and returns how many bytes that was.
func (q *chunkQueue) discard() int {
	n := q.size
	for _, c := range q.chunks {
		c.release()
	}
	q.chunks, q.size = nil, 0
	return n
}
