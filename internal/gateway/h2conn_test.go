package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/backbone-mesh/backbone/internal/tcpstate"
)

// linkedConns connects a client connection to an h2Server serving
// handler over loopback TCP with socket buffers well below the flow
// control windows, so that a side that stops reading soon stops the
// other's writes. (Not below loopback's 64 KiB segments: a receive window
// that never opens to a full segment leaves the sender to zero-window
// probes that back off to seconds.)
func linkedConns(t *testing.T, handler http.Handler, window uint32) *h2Conn {
	t.Helper()
	s := testH2Server(handler)
	s.streamWindow, s.connWindow, s.writeTimeout = window, 4*window, 20*time.Second
	s.init()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	nc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sc := <-accepted
	if sc == nil {
		t.Fatal("accept failed")
	}
	for _, c := range []net.Conn{nc, sc} {
		_ = c.(*net.TCPConn).SetReadBuffer(128 << 10)
		_ = c.(*net.TCPConn).SetWriteBuffer(128 << 10)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.serveConn(sc, &tls.ConnectionState{})
	}()
	cfg := testClientConfig()
	cfg.streamWindow, cfg.connWindow, cfg.writeTimeout = window, 4*window, 20*time.Second
	c, err := newClientConn(nc, cfg, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.Close()
		_ = sc.Close()
		<-done
	})
	return c
}

// TestBothDirectionsSaturatedKeepMoving: streams that upload and
// download at once fill the connection both ways. Each side's frame
// reader owes the other WINDOW_UPDATEs while that side's writers wait for
// the socket; a reader that waited for the write lock to send them would
// stop reading, so would the other side's, and neither writer's socket
// would drain again until the write timeout ended the connection and
// every stream on it.
func TestBothDirectionsSaturatedKeepMoving(t *testing.T) {
	c := linkedConns(t, http.HandlerFunc(echoTunnel), 1<<20)
	const streams, size = 4, 8 << 20
	var wg sync.WaitGroup
	errs := make(chan error, 2*streams)
	for i := range streams {
		if err := c.Reserve(); err != nil {
			t.Fatal(err)
		}
		st, err := c.openStream(http.MethodConnect, "web.demo.svc.cluster.local:80", "", false)
		if err != nil {
			t.Fatal(err)
		}
		want := bytes.Repeat([]byte{byte('a' + i)}, size)
		wg.Add(2)
		go func() {
			defer wg.Done()
			if _, err := st.send(want, true); err != nil {
				errs <- fmt.Errorf("stream %d: upload: %w", i, err)
			}
		}()
		go func() {
			defer wg.Done()
			defer c.finishStream(st)
			if err := answer(t, st); err != nil {
				errs <- fmt.Errorf("stream %d: answer: %w", i, err)
				return
			}
			got, err := io.ReadAll(&h2Body{st: st})
			if err != nil || !bytes.Equal(got, want) {
				errs <- fmt.Errorf("stream %d: echoed %d of %d bytes, intact %t: %v", i, len(got), size, bytes.Equal(got, want[:min(len(got), size)]), err)
			}
		}()
	}
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(60 * time.Second):
		t.Fatal("the streams did not finish in 60 s")
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestEmptyEndStreamOnANegativeWindow: a SETTINGS that shrinks the
// initial window below what a stream already sent leaves its window
// negative (RFC 9113 §6.9.2); the application's close still ends the
// stream with an empty END_STREAM, which takes no window.
func TestEmptyEndStreamOnANegativeWindow(t *testing.T) {
	s := newRawServer(t)
	st := s.open()
	if _, err := st.send(make([]byte, 1000), false); err != nil {
		t.Fatal(err)
	}
	if err := s.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0}); err != nil {
		t.Fatal(err)
	}
	s.sync()
	if n, err := st.send(nil, true); n != 0 || err != nil {
		t.Fatalf("END_STREAM on a window of -1000: %d, %v", n, err)
	}
	d := expect(s, "the empty END_STREAM", func(d *http2.DataFrame) bool { return d.StreamID == st.id && d.StreamEnded() })
	if len(d.Data()) != 0 {
		t.Fatalf("END_STREAM carries %d bytes", len(d.Data()))
	}
	c := s.c
	c.mu.Lock()
	sw, cw := st.sendWindow, c.sendWindow
	c.mu.Unlock()
	if sw != -1000 || cw != initialWindow-1000 {
		t.Fatalf("windows after the empty END_STREAM: stream %d, connection %d", sw, cw)
	}
}

// TestConnectionCloseKeepsACompleteAnswer: an answer that arrived in
// full (END_STREAM) stays readable when the connection ends before the
// application read it, as after a reset (RFC 9113 §8.1): a draining peer
// closes once its last stream ended.
func TestConnectionCloseKeepsACompleteAnswer(t *testing.T) {
	s := newRawServer(t)
	st := s.open()
	s.respond(st.id, "200", false)
	if err := s.fr.WriteData(st.id, true, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	s.sync()
	_ = s.conn.Close()
	select {
	case <-s.c.ctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the connection did not end after its peer closed it")
	}
	if err := answer(t, st); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(&h2Body{st: st})
	if string(b) != "hello" || err != nil {
		t.Fatalf("the complete answer read as %q, %v", b, err)
	}
}

// respondWith sends a response header block with the fields given after
// :status.
func (s *rawServer) respondWith(id uint32, status string, end bool, fields ...string) {
	s.t.Helper()
	s.hbuf.Reset()
	_ = s.enc.WriteField(hpack.HeaderField{Name: ":status", Value: status})
	for i := 0; i+1 < len(fields); i += 2 {
		_ = s.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	if err := s.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: s.hbuf.Bytes(), EndStream: end, EndHeaders: true}); err != nil {
		s.t.Fatal(err)
	}
}

func TestH2ClientRefusesWhatTheProtocolForbids(t *testing.T) {
	for _, tc := range []struct {
		name   string
		fields []string
	}{
		{"101 Switching Protocols", []string{":status", "101"}},
		{"a connection's field", []string{":status", "200", "connection", "close"}},
		{"transfer-encoding", []string{":status", "200", "transfer-encoding", "chunked"}},
		{"te other than trailers", []string{":status", "200", "te", "gzip"}},
	} {
		t.Run("an answer with "+tc.name+" resets the stream", func(t *testing.T) {
			s := newRawServer(t)
			st := s.open()
			s.respondWith(st.id, tc.fields[1], false, tc.fields[2:]...)
			s.expectReset(st.id, http2.ErrCodeProtocol)
			if err := answer(t, st); err == nil {
				t.Fatal("a malformed answer was taken")
			}
		})
	}

	t.Run("trailers after END_STREAM reset the stream, and the answer stays", func(t *testing.T) {
		s := newRawServer(t)
		st := s.open()
		s.respond(st.id, "200", false)
		_ = s.fr.WriteData(st.id, true, []byte("done"))
		s.respondWith(st.id, "200", true) // a second block: trailers, after the end
		s.expectReset(st.id, http2.ErrCodeStreamClosed)
		if b, err := io.ReadAll(&h2Body{st: st}); string(b) != "done" || err != nil {
			t.Fatalf("the complete answer read as %q, %v", b, err)
		}
	})

	for _, tc := range []struct {
		name string
		send func(s *rawServer, st *h2Stream) error
	}{
		{"SETTINGS_ENABLE_PUSH=1", func(s *rawServer, _ *h2Stream) error {
			return s.fr.WriteSettings(http2.Setting{ID: http2.SettingEnablePush, Val: 1})
		}},
		{"DATA on an even stream", func(s *rawServer, st *h2Stream) error {
			return s.fr.WriteData(st.id+1, false, []byte("x"))
		}},
	} {
		t.Run(tc.name+" ends the connection", func(t *testing.T) {
			s := newRawServer(t)
			st := s.open()
			if err := tc.send(s, st); err != nil {
				t.Fatal(err)
			}
			g := expect(s, "GOAWAY", func(*http2.GoAwayFrame) bool { return true })
			if g.ErrCode != http2.ErrCodeProtocol {
				t.Fatalf("GOAWAY %v, want PROTOCOL_ERROR", g.ErrCode)
			}
		})
	}
}

// TestGoAwayGivesTheWindowBack: the bytes of a stream a GOAWAY refuses
// are dropped and the connection's window they held is given back, as
// the streams below the GOAWAY go on.
func TestGoAwayGivesTheWindowBack(t *testing.T) {
	s := newRawServer(t)
	first, second := s.open(), s.open()
	s.respond(second.id, "200", false)
	if err := s.fr.WriteData(second.id, false, make([]byte, 8<<10)); err != nil {
		t.Fatal(err)
	}
	s.sync()
	if err := s.fr.WriteGoAway(first.id, http2.ErrCodeNo, nil); err != nil {
		t.Fatal(err)
	}
	var given uint32
	for given < 8<<10 {
		f, err := s.fr.ReadFrame()
		if err != nil {
			t.Fatalf("the connection's window was given back %d of 8 KiB: %v", given, err)
		}
		if w, ok := f.(*http2.WindowUpdateFrame); ok && w.StreamID == 0 {
			given += w.Increment
		}
	}
}

// TestAnswerReadingEndsWithItsContext: a peer that answers and then
// sends nothing, its connection alive, does not hold the probe past its
// context.
func TestAnswerReadingEndsWithItsContext(t *testing.T) {
	s := newRawServer(t)
	if err := s.c.Reserve(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	got := make(chan error, 1)
	go func() {
		_, _, err := s.c.get(ctx, "gateway", "/ready", 256)
		got <- err
	}()
	h := expect(s, "the GET", func(*http2.MetaHeadersFrame) bool { return true })
	s.respond(h.StreamID, "200", false)
	select {
	case err := <-got:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("reading an answer that never ends: %v, want the context's deadline", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the answer's reading outlived its context")
	}
	s.expectReset(h.StreamID, http2.ErrCodeCancel)
}

// TestCloseWhenIdleLetsADrainingPeerFinish: a connection taken out of
// the pool whose peer sent GOAWAY keeps the streams the peer agreed to
// finish until they end.
func TestCloseWhenIdleLetsADrainingPeerFinish(t *testing.T) {
	s := newRawServer(t)
	st := s.open()
	if err := s.fr.WriteGoAway(st.id, http2.ErrCodeNo, nil); err != nil {
		t.Fatal(err)
	}
	s.sync()
	closed := make(chan struct{})
	go func() { closeWhenIdle(s.c); close(closed) }()
	time.Sleep(1500 * time.Millisecond) // past closeWhenIdle's first look
	s.respond(st.id, "200", false)
	if err := s.fr.WriteData(st.id, true, []byte("finished")); err != nil {
		t.Fatal(err)
	}
	if err := answer(t, st); err != nil {
		t.Fatalf("the stream below the GOAWAY: %v", err)
	}
	if b, err := io.ReadAll(&h2Body{st: st}); string(b) != "finished" || err != nil {
		t.Fatalf("its answer read as %q, %v", b, err)
	}
	s.c.finishStream(st)
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the connection was not closed once its last stream ended")
	}
}

// TestDialForAChangedLinkIsNotPooled: a connection dialled while its
// Link changed (perhaps to expect another identity) is closed, not added
// to the peer the Link no longer uses.
func TestDialForAChangedLinkIsNotPooled(t *testing.T) {
	east, west := testIdentities(t)
	addr := rawGateway(t, east.ServerTLS("h2"), nil, func(*http2.Framer, *hpack.Encoder, *bytes.Buffer, uint32, []byte) {})
	pool := rawPool(t, west, addr)
	pr, err := pool.peer("east")
	if err != nil {
		t.Fatal(err)
	}
	pr.closeAll() // as Update does when the Link changes, while a dial is under way
	if _, err := pool.connTo(context.Background(), pr, addr); err == nil || !strings.Contains(err.Error(), "link changed") {
		t.Fatalf("a dial for a replaced peer: %v, want the link changed", err)
	}
	pr.mu.Lock()
	n := len(pr.conns[addr])
	pr.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d connections pooled on the replaced peer", n)
	}
}

// TestBackendResetResetsTheStream: a backend whose connection fails
// partway through its answer resets the stream: the caller must not take
// the bytes before the failure for a complete answer.
func TestBackendResetResetsTheStream(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		_, _ = c.Write([]byte("partial"))
		time.Sleep(50 * time.Millisecond)
		tcpstate.Abort(c) // the backend fails mid-answer
	}()
	g := &Gateway{metrics: newMetrics(prometheus.NewRegistry()), drain: newDrainTracker()}
	in := &inboundServer{g: g}
	s := testH2Server(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		backend, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Error(err)
			return
		}
		in.tunnel(w, r, "west", backend)
	}))
	p := newRawPeer(t, s, true)
	p.connect(1)
	p.expectStatus(1, "200")
	var got []byte
	for {
		switch f := p.next().(type) {
		case nil:
			t.Fatal("the connection ended")
		case *http2.DataFrame:
			got = append(got, f.Data()...)
			if f.StreamEnded() {
				t.Fatalf("the backend's failure reached the caller as a clean end after %q", got)
			}
		case *http2.RSTStreamFrame:
			if string(got) != "partial" {
				t.Fatalf("before the reset: %q", got)
			}
			return
		}
	}
}
