package gateway

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// testClientConfig is the settings holder of client connections in
// tests: small windows, so flow control is exercised by modest transfers.
func testClientConfig() *h2Server {
	return &h2Server{
		log:          slog.New(slog.DiscardHandler),
		pingInterval: time.Minute, pingTimeout: time.Minute, writeTimeout: 10 * time.Second,
		streamWindow: 16 << 10, connWindow: 64 << 10,
		maxFrameSize: 16 << 10, maxHeaderBytes: 8 << 10,
	}
}

// rawServer is a peer gateway speaking frames to a client connection
// over loopback TCP (no TLS: newClientConn is given the connection after
// the handshake).
type rawServer struct {
	t    *testing.T
	conn net.Conn
	fr   *http2.Framer
	enc  *hpack.Encoder
	hbuf bytes.Buffer
	c    *h2Conn
}

// newRawServer connects a client connection to a raw server, which reads
// the client's preface and sends the settings given.
func newRawServer(t *testing.T, settings ...http2.Setting) *rawServer {
	t.Helper()
	return newRawServerWith(t, nil, settings...)
}

// newRawServerWith is newRawServer with the client's connection wrapped.
func newRawServerWith(t *testing.T, wrap func(net.Conn) net.Conn, settings ...http2.Setting) *rawServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	nc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := &rawServer{t: t, conn: <-accepted}
	if s.conn == nil {
		t.Fatal("accept failed")
	}
	if wrap != nil {
		nc = wrap(nc)
	}
	s.c, err = newClientConn(nc, testClientConfig(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.c.Close(); _ = s.conn.Close() })
	_ = s.conn.SetDeadline(time.Now().Add(20 * time.Second))
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(s.conn, preface); err != nil || string(preface) != http2.ClientPreface {
		t.Fatalf("preface %q, %v", preface, err)
	}
	s.fr = http2.NewFramer(s.conn, s.conn)
	s.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	s.enc = hpack.NewEncoder(&s.hbuf)
	if err := s.fr.WriteSettings(settings...); err != nil {
		t.Fatal(err)
	}
	s.sync()
	return s
}

// sync sends a PING and reads until its answer: the client has handled
// every frame sent before it.
func (s *rawServer) sync() {
	s.t.Helper()
	data := [8]byte{'s', 'y', 'n', 'c'}
	if err := s.fr.WritePing(false, data); err != nil {
		s.t.Fatal(err)
	}
	for {
		f := s.next()
		if f == nil {
			s.t.Fatal("connection closed before the PING's answer")
		}
		if p, ok := f.(*http2.PingFrame); ok && p.IsAck() && p.Data == data {
			return
		}
	}
}

// next returns the client's next frame but SETTINGS (acknowledged) and
// WINDOW_UPDATE; nil when the connection ended.
func (s *rawServer) next() http2.Frame {
	f, _ := nextFrame(s.fr)
	return f
}

// expect reads until a frame of type T that match accepts.
func expect[T http2.Frame](s *rawServer, what string, match func(T) bool) T {
	s.t.Helper()
	for {
		f := s.next()
		if f == nil {
			s.t.Fatalf("connection closed, want %s", what)
		}
		if g, ok := f.(T); ok && match(g) {
			return g
		}
	}
}

// expectReset reads until the RST_STREAM of stream id and checks its code.
func (s *rawServer) expectReset(id uint32, code http2.ErrCode) {
	s.t.Helper()
	rst := expect(s, "RST_STREAM", func(r *http2.RSTStreamFrame) bool { return r.StreamID == id })
	if rst.ErrCode != code {
		s.t.Fatalf("RST_STREAM %v, want %v", rst.ErrCode, code)
	}
}

// respond sends a response header block.
func (s *rawServer) respond(id uint32, status string, end bool) {
	s.t.Helper()
	s.hbuf.Reset()
	_ = s.enc.WriteField(hpack.HeaderField{Name: ":status", Value: status})
	if err := s.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: s.hbuf.Bytes(), EndStream: end, EndHeaders: true}); err != nil {
		s.t.Fatal(err)
	}
}

// open reserves a slot and opens a CONNECT stream.
func (s *rawServer) open() *h2Stream {
	s.t.Helper()
	if err := s.c.Reserve(); err != nil {
		s.t.Fatal(err)
	}
	st, err := s.c.openStream(http.MethodConnect, "web.demo.svc.cluster.local:80", "", false)
	if err != nil {
		s.t.Fatal(err)
	}
	h := expect(s, "the stream's HEADERS", func(h *http2.MetaHeadersFrame) bool { return h.StreamID == st.id })
	if h.PseudoValue("method") != "CONNECT" || h.PseudoValue("authority") != "web.demo.svc.cluster.local:80" || h.PseudoValue("path") != "" {
		s.t.Fatalf("CONNECT sent as %v", h.Fields)
	}
	return st
}

func answer(t *testing.T, st *h2Stream) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return st.awaitAnswer(ctx)
}

func TestH2ClientFollowsThePeer(t *testing.T) {
	t.Run("streams beyond the peer's limit are not opened", func(t *testing.T) {
		s := newRawServer(t, http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 1})
		st := s.open()
		if err := s.c.Reserve(); !errors.Is(err, errConnFull) {
			t.Fatalf("second stream: %v, want errConnFull", err)
		}
		s.respond(st.id, "200", true)
		if err := answer(t, st); err != nil {
			t.Fatal(err)
		}
		s.c.finishStream(st)
		if err := s.c.Reserve(); err != nil {
			t.Fatalf("a stream once the first ended: %v", err)
		}
		s.c.Release()
	})

	t.Run("streams a GOAWAY leaves out fail as not processed; the others finish", func(t *testing.T) {
		s := newRawServer(t)
		first, second := s.open(), s.open()
		if err := s.fr.WriteGoAway(first.id, http2.ErrCodeNo, nil); err != nil {
			t.Fatal(err)
		}
		if err := answer(t, second); !errors.Is(err, errNotProcessed) {
			t.Fatalf("stream above the GOAWAY: %v, want errNotProcessed", err)
		}
		if err := s.c.Err(); !errors.Is(err, errPeerGoingAway) {
			t.Fatalf("connection after GOAWAY: Err %v, want errPeerGoingAway", err)
		}
		if err := s.c.Reserve(); err == nil {
			t.Fatal("a new stream was reserved after GOAWAY")
		}
		s.respond(first.id, "200", false)
		_ = s.fr.WriteData(first.id, true, []byte("bye"))
		if err := answer(t, first); err != nil {
			t.Fatal(err)
		}
		if b, err := io.ReadAll(&h2Body{st: first}); string(b) != "bye" || err != nil {
			t.Fatalf("answer below the GOAWAY: %q, %v", b, err)
		}
		s.c.finishStream(second)
		s.c.finishStream(first) // our side never ended: a RST_STREAM (CANCEL) ends it
		s.expectReset(first.id, http2.ErrCodeCancel)
		if f := s.next(); f != nil {
			t.Fatalf("the connection stayed open after its last stream: %v", f)
		}
	})

	t.Run("a complete answer stays readable after RST_STREAM NO_ERROR", func(t *testing.T) {
		s := newRawServer(t)
		st := s.open()
		s.respond(st.id, "200", false)
		_ = s.fr.WriteData(st.id, true, []byte("bye"))
		_ = s.fr.WriteRSTStream(st.id, http2.ErrCodeNo)
		s.sync()
		if err := answer(t, st); err != nil {
			t.Fatal(err)
		}
		if b, err := io.ReadAll(&h2Body{st: st}); string(b) != "bye" || err != nil {
			t.Fatalf("answer %q, %v; want bye", b, err)
		}
		if _, err := st.send([]byte("more"), false); err == nil {
			t.Fatal("sent on a stream the peer reset")
		}
	})

	t.Run("DATA before the answer resets the stream", func(t *testing.T) {
		s := newRawServer(t)
		st := s.open()
		_ = s.fr.WriteData(st.id, false, []byte("early"))
		s.expectReset(st.id, http2.ErrCodeProtocol)
		if err := answer(t, st); err == nil {
			t.Fatal("a stream answered with DATA first was taken as answered")
		}
	})

	t.Run("an informational answer is skipped; a malformed one resets the stream", func(t *testing.T) {
		s := newRawServer(t)
		st, bad := s.open(), s.open()
		s.respond(st.id, "103", false)
		s.respond(st.id, "200", false)
		s.respond(bad.id, "2x0", false)
		if err := answer(t, st); err != nil || st.status != 200 {
			t.Fatalf("answer: %v, status %d; want 200", err, st.status)
		}
		s.expectReset(bad.id, http2.ErrCodeProtocol)
		if err := answer(t, bad); err == nil {
			t.Fatal("a malformed answer was taken")
		}
	})

	t.Run("HEADERS on a stream it did not open end the connection", func(t *testing.T) {
		s := newRawServer(t)
		s.respond(5, "200", true)
		ga := expect(s, "GOAWAY", func(*http2.GoAwayFrame) bool { return true })
		if ga.ErrCode != http2.ErrCodeProtocol {
			t.Fatalf("GOAWAY %v, want PROTOCOL_ERROR", ga.ErrCode)
		}
		if err := s.c.Reserve(); err == nil {
			t.Fatal("a stream was reserved on a failed connection")
		}
	})

	t.Run("uploads wait for the peer's window and END_STREAM follows the bytes", func(t *testing.T) {
		s := newRawServer(t, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 10})
		st := s.open()
		sent := make(chan error, 1)
		go func() {
			_, err := st.send([]byte("0123456789abcdef"), true)
			sent <- err
		}()
		var got []byte
		for len(got) < 10 {
			d := expect(s, "DATA", func(d *http2.DataFrame) bool { return d.StreamID == st.id })
			if d.StreamEnded() {
				t.Fatal("END_STREAM before the window let the last bytes go")
			}
			got = append(got, d.Data()...)
		}
		if string(got) != "0123456789" {
			t.Fatalf("within the window: %q", got)
		}
		_ = s.fr.WriteWindowUpdate(st.id, 100)
		d := expect(s, "DATA", func(d *http2.DataFrame) bool { return d.StreamID == st.id })
		if string(d.Data()) != "abcdef" || !d.StreamEnded() {
			t.Fatalf("after the update: %q, END_STREAM %v", d.Data(), d.StreamEnded())
		}
		select {
		case err := <-sent:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("send did not return")
		}
	})
}

// FuzzH2ClientFrames feeds a client connection, with two streams open,
// whatever a peer gateway might send: it must not panic, and the
// connection and its streams must end when the peer leaves.
func FuzzH2ClientFrames(f *testing.F) {
	f.Add(frames(func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer) {
		_ = fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 1})
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, BlockFragment: block(enc, hb, ":status", "200")})
		_ = fr.WriteData(1, false, []byte("hello"))
		_ = fr.WriteWindowUpdate(1, 3)
		_ = fr.WriteData(1, true, []byte("world"))
		_ = fr.WriteRSTStream(1, http2.ErrCodeNo)
		_ = fr.WritePing(false, [8]byte{1})
	}))
	f.Add(frames(func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer) {
		_ = fr.WriteSettings(http2.Setting{ID: http2.SettingHeaderTableSize, Val: 0}, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1})
		b := block(enc, hb, ":status", "103", "link", "</a>")
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, EndHeaders: false, BlockFragment: b[:len(b)/2]})
		_ = fr.WriteContinuation(3, true, b[len(b)/2:])
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, EndHeaders: true, BlockFragment: block(enc, hb, ":status", "403")})
		_ = fr.WriteData(3, false, []byte("denied"))
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, EndHeaders: true, EndStream: true, BlockFragment: block(enc, hb, "x-trailer", "1")})
		_ = fr.WriteGoAway(1, http2.ErrCodeNo, nil)
	}))
	f.Add(frames(func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer) {
		_ = fr.WriteSettings()
		_ = fr.WriteData(1, false, []byte("before the answer"))
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 7, EndHeaders: true, BlockFragment: block(enc, hb, ":status", "200")})
		_ = fr.WritePushPromise(http2.PushPromiseParam{StreamID: 1, PromiseID: 2, EndHeaders: true, BlockFragment: block(enc, hb, ":method", "GET")})
		_ = fr.WriteWindowUpdate(0, 1<<31-1)
	}))
	f.Add([]byte{0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 8, 6, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, input []byte) {
		client, server := net.Pipe()
		go func() { _, _ = io.Copy(io.Discard, server) }()
		c, err := newClientConn(client, testClientConfig(), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var streams []*h2Stream
		for _, path := range []string{"", "/ready"} {
			if c.Reserve() != nil {
				break
			}
			method := http.MethodConnect
			if path != "" {
				method = http.MethodGet
			}
			st, err := c.openStream(method, "web.demo.svc.cluster.local:80", path, path != "")
			if err != nil {
				break
			}
			streams = append(streams, st)
		}
		_, _ = server.Write(input)
		_ = server.Close()
		for _, st := range streams {
			if err := answer(t, st); err == nil {
				_, _ = io.Copy(io.Discard, &h2Body{st: st})
			}
			c.finishStream(st)
		}
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
			c.mu.Lock()
			closed, active := c.closed, c.active
			c.mu.Unlock()
			if closed && active == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("connection closed %v with %d streams counted after its peer left", closed, active)
			}
		}
	})
}

// cutConn, once cut, writes half of what it is given and fails: a
// connection that broke while a write was under way.
type cutConn struct {
	net.Conn
	cut atomic.Bool
}

func (c *cutConn) Write(p []byte) (int, error) {
	if c.cut.Load() {
		n, _ := c.Conn.Write(p[:len(p)/2])
		return n, errors.New("connection broke mid-write")
	}
	return c.Conn.Write(p)
}

// TestAFailedWriteCountsItsBytesAsSent: the bytes of a DATA frame whose
// write failed part-way may have reached the peer, so they count as sent:
// a stream is retried on another connection only when none of the
// application's bytes were handed on (early.go), and a retry here would
// deliver them twice.
func TestAFailedWriteCountsItsBytesAsSent(t *testing.T) {
	var cc *cutConn
	s := newRawServerWith(t, func(nc net.Conn) net.Conn { cc = &cutConn{Conn: nc}; return cc })
	st := s.open()
	cc.cut.Store(true)
	n, err := st.send(make([]byte, 1000), false)
	if err == nil {
		t.Fatal("a write over a broken connection succeeded")
	}
	if n != 1000 {
		t.Errorf("send reported %d bytes handed on after a write that failed part-way, want all 1000", n)
	}
}
