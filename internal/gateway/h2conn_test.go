package gateway

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
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
