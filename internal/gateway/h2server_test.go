package gateway

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// testH2Server is an h2Server with small windows, so flow control is
// exercised by modest transfers.
func testH2Server(handler http.Handler) *h2Server {
	return &h2Server{
		handler: handler, log: slog.New(slog.DiscardHandler),
		handshakeTimeout: 5 * time.Second, idleTimeout: time.Minute,
		pingInterval: time.Minute, pingTimeout: time.Minute, writeTimeout: 10 * time.Second,
		maxStreams: 100, streamWindow: 16 << 10, connWindow: 64 << 10,
		maxFrameSize: 16 << 10, maxHeaderBytes: 8 << 10,
	}
}

// rawPeer is a client speaking frames to an h2Server over loopback TCP
// (no TLS: serveConn is given the connection after the handshake).
type rawPeer struct {
	t    *testing.T
	conn net.Conn
	fr   *http2.Framer
	enc  *hpack.Encoder
	hbuf bytes.Buffer
	done chan struct{} // serveConn returned
}

func newRawPeer(t *testing.T, s *h2Server, sendSettings bool) *rawPeer {
	t.Helper()
	s.init()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	p := &rawPeer{t: t, done: make(chan struct{})}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	p.conn, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sc := <-accepted
	go func() {
		defer close(p.done)
		s.serveConn(sc, &tls.ConnectionState{})
	}()
	t.Cleanup(func() {
		_ = p.conn.Close()
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			t.Error("the server did not end the connection after the peer closed it")
		}
	})
	_ = p.conn.SetDeadline(time.Now().Add(20 * time.Second))
	p.fr = http2.NewFramer(p.conn, p.conn)
	p.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	p.enc = hpack.NewEncoder(&p.hbuf)
	if _, err := io.WriteString(p.conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if sendSettings {
		if err := p.fr.WriteSettings(); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// headers sends a header block, pseudo-header fields first.
func (p *rawPeer) headers(id uint32, end bool, fields ...string) {
	p.t.Helper()
	p.hbuf.Reset()
	for i := 0; i+1 < len(fields); i += 2 {
		_ = p.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	if err := p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: p.hbuf.Bytes(), EndStream: end, EndHeaders: true}); err != nil {
		p.t.Fatal(err)
	}
}

func (p *rawPeer) connect(id uint32) {
	p.t.Helper()
	p.headers(id, false, ":method", "CONNECT", ":authority", "web.demo.svc.cluster.local:80")
}

// next returns the next frame that is not SETTINGS, WINDOW_UPDATE or a
// PING ack; nil when the connection ended.
func (p *rawPeer) next() http2.Frame {
	p.t.Helper()
	f, err := nextFrame(p.fr)
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "reset") {
			return nil
		}
		p.t.Fatalf("reading: %v", err)
	}
	return f
}

// nextFrame reads the next frame but SETTINGS (acknowledged) and
// WINDOW_UPDATE.
func nextFrame(fr *http2.Framer) (http2.Frame, error) {
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return nil, err
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = fr.WriteSettingsAck()
			}
			continue
		case *http2.WindowUpdateFrame:
			continue
		}
		return f, nil
	}
}

// expectGoAway reads until a GOAWAY and checks its code.
func (p *rawPeer) expectGoAway(code http2.ErrCode) {
	p.t.Helper()
	for {
		f := p.next()
		if f == nil {
			p.t.Fatalf("connection closed without GOAWAY %v", code)
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			if ga.ErrCode != code {
				p.t.Fatalf("GOAWAY %v (%q), want %v", ga.ErrCode, ga.DebugData(), code)
			}
			return
		}
	}
}

// expectReset reads until stream id's RST_STREAM and checks its code.
func (p *rawPeer) expectReset(id uint32, code http2.ErrCode) {
	p.t.Helper()
	for {
		f := p.next()
		if f == nil {
			p.t.Fatalf("connection closed, want RST_STREAM %v on %d", code, id)
		}
		if rst, ok := f.(*http2.RSTStreamFrame); ok && rst.StreamID == id {
			if rst.ErrCode != code {
				p.t.Fatalf("RST_STREAM %v on %d, want %v", rst.ErrCode, id, code)
			}
			return
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			p.t.Fatalf("GOAWAY %v (%q), want RST_STREAM %v on %d", ga.ErrCode, ga.DebugData(), code, id)
		}
	}
}

// expectStatus reads until stream id's response header block.
func (p *rawPeer) expectStatus(id uint32, status string) *http2.MetaHeadersFrame {
	p.t.Helper()
	for {
		f := p.next()
		if f == nil {
			p.t.Fatalf("connection closed, want :status %s on %d", status, id)
		}
		if h, ok := f.(*http2.MetaHeadersFrame); ok && h.StreamID == id {
			if got := h.PseudoValue("status"); got != status {
				p.t.Fatalf(":status %s on %d, want %s", got, id, status)
			}
			return h
		}
		if rst, ok := f.(*http2.RSTStreamFrame); ok && rst.StreamID == id {
			p.t.Fatalf("RST_STREAM %v on %d, want :status %s", rst.ErrCode, id, status)
		}
	}
}

// echo answers every CONNECT by echoing its stream, and every other
// request with "ok".
var echo = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodConnect {
		_, _ = io.WriteString(w, "ok\n")
		return
	}
	fw := newFlushWriter(w)
	w.WriteHeader(http.StatusOK)
	_ = fw.f.FlushError()
	_, _ = copyBuffered(fw, r.Body)
})

func TestH2ServerRefusesWhatTheProtocolForbids(t *testing.T) {
	t.Run("a first frame that is not SETTINGS", func(t *testing.T) {
		p := newRawPeer(t, testH2Server(echo), false)
		_ = p.fr.WritePing(false, [8]byte{})
		p.expectGoAway(http2.ErrCodeProtocol)
	})
	t.Run("HEADERS on an even stream", func(t *testing.T) {
		p := newRawPeer(t, testH2Server(echo), true)
		p.connect(2)
		p.expectGoAway(http2.ErrCodeProtocol)
	})
	t.Run("HEADERS on a closed stream are dropped, HPACK kept in step", func(t *testing.T) {
		// Trailers may cross the RST_STREAM a server sends when its
		// handler returned early (RFC 9113 §5.1: ignored after it).
		p := newRawPeer(t, testH2Server(echo), true)
		p.connect(5)
		p.expectStatus(5, "200")
		p.headers(3, true, "x-trailer", "dropped") // 3 is closed: 5 was opened
		p.connect(7)
		p.expectStatus(7, "200")
	})
	t.Run("DATA on a stream never opened", func(t *testing.T) {
		p := newRawPeer(t, testH2Server(echo), true)
		_ = p.fr.WriteData(7, false, []byte("x"))
		p.expectGoAway(http2.ErrCodeProtocol)
	})
	t.Run("CONNECT with a :path", func(t *testing.T) {
		p := newRawPeer(t, testH2Server(echo), true)
		p.headers(1, false, ":method", "CONNECT", ":authority", "a:80", ":path", "/")
		p.expectReset(1, http2.ErrCodeProtocol)
		// The connection lives on.
		p.connect(3)
		p.expectStatus(3, "200")
	})
	t.Run("CONNECT without :authority", func(t *testing.T) {
		p := newRawPeer(t, testH2Server(echo), true)
		p.headers(1, false, ":method", "CONNECT")
		p.expectReset(1, http2.ErrCodeProtocol)
	})
	t.Run("extended CONNECT, never offered", func(t *testing.T) {
		p := newRawPeer(t, testH2Server(echo), true)
		p.headers(1, false, ":method", "CONNECT", ":protocol", "websocket", ":scheme", "https", ":path", "/", ":authority", "a:80")
		p.expectReset(1, http2.ErrCodeProtocol)
	})
	t.Run("a connection-specific header", func(t *testing.T) {
		p := newRawPeer(t, testH2Server(echo), true)
		p.headers(1, true, ":method", "GET", ":scheme", "https", ":path", "/", ":authority", "a", "connection", "close")
		p.expectReset(1, http2.ErrCodeProtocol)
	})
	t.Run("a header list above the limit gets 431", func(t *testing.T) {
		p := newRawPeer(t, testH2Server(echo), true)
		fields := []string{":method", "GET", ":scheme", "https", ":path", "/", ":authority", "a"}
		for i := range 5 { // 10 KiB in fields of 2 KiB
			fields = append(fields, fmt.Sprintf("x-big-%d", i), strings.Repeat("b", 2<<10))
		}
		p.headers(1, true, fields...)
		p.expectStatus(1, "431")
	})
	t.Run("DATA beyond the stream's window", func(t *testing.T) {
		p := newRawPeer(t, testH2Server(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			<-r.Context().Done() // never reads: the window is not given back
		})), true)
		_ = p.fr.WriteSettingsAck() // the server's SETTINGS (always its first frame) apply
		p.connect(1)
		chunk := make([]byte, 16<<10)
		_ = p.fr.WriteData(1, false, chunk) // exactly the window
		_ = p.fr.WriteData(1, false, []byte("x"))
		p.expectReset(1, http2.ErrCodeFlowControl)
	})
	// RFC 9113 6.9.3: a peer that has not seen the server's SETTINGS yet
	// sends with the default window (65,535), above the server's 16 KiB;
	// once it acknowledges them, the open stream's window is the server's.
	t.Run("DATA before the peer acknowledged SETTINGS has the default window", func(t *testing.T) {
		p := newRawPeer(t, testH2Server(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			<-r.Context().Done()
		})), true)
		p.connect(1)
		for range 2 {
			_ = p.fr.WriteData(1, false, make([]byte, 16<<10)) // 32 KiB: within 65,535, beyond 16 KiB
		}
		_ = p.fr.WritePing(false, [8]byte{1})
		for {
			f := p.next()
			if f == nil {
				t.Fatal("connection closed")
			}
			if _, ok := f.(*http2.PingFrame); ok {
				break
			}
			if ga, ok := f.(*http2.GoAwayFrame); ok {
				t.Fatalf("GOAWAY %v (%q) before the PING's answer", ga.ErrCode, ga.DebugData())
			}
			t.Fatalf("%v before the PING's answer: the default window was not allowed", f)
		}
		// next acknowledged the SETTINGS: the stream's window is now
		// 16 KiB - 32 KiB, and any byte is beyond it.
		_ = p.fr.WriteData(1, false, []byte("x"))
		p.expectReset(1, http2.ErrCodeFlowControl)
	})
	t.Run("DATA beyond the connection's window", func(t *testing.T) {
		p := newRawPeer(t, testH2Server(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			<-r.Context().Done()
		})), true)
		chunk := make([]byte, 16<<10)
		for id := uint32(1); id <= 9; id += 2 { // 4 streams fill 64 KiB
			p.connect(id)
			if id < 9 {
				_ = p.fr.WriteData(id, false, chunk)
			}
		}
		_ = p.fr.WriteData(9, false, []byte("x"))
		p.expectGoAway(http2.ErrCodeFlowControl)
	})
	t.Run("DATA after END_STREAM", func(t *testing.T) {
		p := newRawPeer(t, testH2Server(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusOK)
			newFlushWriter(w).f.FlushError()
			<-r.Context().Done()
		})), true)
		p.connect(1)
		_ = p.fr.WriteData(1, true, []byte("x"))
		p.expectStatus(1, "200")
		_ = p.fr.WriteData(1, false, []byte("y"))
		p.expectReset(1, http2.ErrCodeStreamClosed)
	})
	t.Run("WINDOW_UPDATE of 0 on a stream never opened", func(t *testing.T) {
		p := newRawPeer(t, testH2Server(echo), true)
		p.fr.AllowIllegalWrites = true
		_ = p.fr.WriteWindowUpdate(9, 0)
		p.expectGoAway(http2.ErrCodeProtocol)
	})
	t.Run("WINDOW_UPDATE of 0 on an open stream resets it alone", func(t *testing.T) {
		p := newRawPeer(t, testH2Server(echo), true)
		p.fr.AllowIllegalWrites = true
		p.connect(1)
		p.expectStatus(1, "200")
		_ = p.fr.WriteWindowUpdate(1, 0)
		p.expectReset(1, http2.ErrCodeProtocol)
		p.connect(3)
		p.expectStatus(3, "200")
	})
	t.Run("a window above 2^31-1", func(t *testing.T) {
		p := newRawPeer(t, testH2Server(echo), true)
		_ = p.fr.WriteWindowUpdate(0, 1<<31-1)
		p.expectGoAway(http2.ErrCodeFlowControl)
	})
	t.Run("PUSH_PROMISE from the client", func(t *testing.T) {
		p := newRawPeer(t, testH2Server(echo), true)
		p.connect(1)
		_ = p.fr.WritePushPromise(http2.PushPromiseParam{StreamID: 1, PromiseID: 2, EndHeaders: true})
		p.expectGoAway(http2.ErrCodeProtocol)
	})
	t.Run("a frame larger than advertised", func(t *testing.T) {
		p := newRawPeer(t, testH2Server(echo), true)
		p.connect(1)
		_ = p.fr.WriteData(1, false, make([]byte, 16<<10+1))
		p.expectGoAway(http2.ErrCodeFrameSize)
	})
}

func TestH2ServerAnswers(t *testing.T) {
	t.Run("PING", func(t *testing.T) {
		p := newRawPeer(t, testH2Server(echo), true)
		data := [8]byte{1, 2, 3, 4, 5, 6, 7, 8}
		_ = p.fr.WritePing(false, data)
		for {
			f := p.next()
			if ping, ok := f.(*http2.PingFrame); ok {
				if !ping.IsAck() || ping.Data != data {
					t.Fatalf("PING answered with %+v", ping)
				}
				return
			}
		}
	})
	t.Run("streams above the limit are refused, the others served", func(t *testing.T) {
		release := make(chan struct{})
		s := testH2Server(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			<-release
		}))
		s.maxStreams = 8 // 9 may run: one over the limit absorbs a peer's race
		p := newRawPeer(t, s, true)
		for id := uint32(1); id <= 19; id += 2 {
			p.headers(id, true, ":method", "GET", ":scheme", "https", ":path", "/", ":authority", "a")
		}
		p.expectReset(19, http2.ErrCodeRefusedStream)
		close(release)
		for i := 0; i < 9; i++ {
			h := p.next().(*http2.MetaHeadersFrame)
			if h.PseudoValue("status") != "200" || h.StreamID == 19 {
				t.Fatalf("stream %d answered %s", h.StreamID, h.PseudoValue("status"))
			}
		}
	})
	t.Run("a reset cancels the handler", func(t *testing.T) {
		cancelled := make(chan error, 1)
		p := newRawPeer(t, testH2Server(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, err := io.ReadAll(r.Body)
			<-r.Context().Done()
			cancelled <- err
		})), true)
		p.connect(1)
		_ = p.fr.WriteData(1, false, []byte("partial"))
		_ = p.fr.WriteRSTStream(1, http2.ErrCodeCancel)
		select {
		case err := <-cancelled:
			if err == nil {
				t.Fatal("the body read to EOF after a reset")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the handler's context was not cancelled")
		}
	})
	t.Run("response headers past the frame size go in CONTINUATION frames", func(t *testing.T) {
		big := strings.Repeat("v", 40<<10)
		p := newRawPeer(t, testH2Server(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Big", big)
			w.WriteHeader(http.StatusTeapot)
		})), true)
		p.headers(1, true, ":method", "GET", ":scheme", "https", ":path", "/", ":authority", "a")
		p.fr.ReadMetaHeaders.SetMaxStringLength(1 << 20)
		p.fr.MaxHeaderListSize = 1 << 20
		h := p.expectStatus(1, "418")
		if got := h.RegularFields(); len(got) != 1 || got[0].Value != big || !h.StreamEnded() {
			t.Fatalf("big header lost: %d fields, ended %v", len(got), h.StreamEnded())
		}
	})
	t.Run("an idle connection is told to go away", func(t *testing.T) {
		s := testH2Server(echo)
		s.idleTimeout = 200 * time.Millisecond
		p := newRawPeer(t, s, true)
		p.expectGoAway(http2.ErrCodeNo)
		if f := p.next(); f != nil {
			t.Fatalf("after GOAWAY: %v", f)
		}
	})
	t.Run("a peer that answers no PING is cut off", func(t *testing.T) {
		s := testH2Server(echo)
		s.pingInterval, s.pingTimeout = 200*time.Millisecond, 200*time.Millisecond
		p := newRawPeer(t, s, true)
		start := time.Now()
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			t.Fatal("a silent peer kept its connection")
		}
		if d := time.Since(start); d < 350*time.Millisecond {
			t.Fatalf("cut off after %v, before the PING timed out", d)
		}
	})
}

// h2Client returns an HTTP/2 client of an h2Server on a TLS listener.
func h2Client(t *testing.T, s *h2Server) (*http.Client, string) {
	t.Helper()
	east, west := testIdentities(t)
	s.tlsConfig = east.ServerTLS("h2")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve(l) }()
	t.Cleanup(func() { _ = s.Close() })
	var protocols http.Protocols
	protocols.SetHTTP2(true)
	tr := &http.Transport{TLSClientConfig: west.ClientTLS(east.ID(), "h2"), Protocols: &protocols, HTTP2: h2Config()}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}, l.Addr().String()
}

func TestH2ServerCarriesStreamsOfGoClients(t *testing.T) {
	client, addr := h2Client(t, testH2Server(echo))

	t.Run("GET", func(t *testing.T) {
		resp, err := client.Get("https://" + addr + "/ready")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "ok\n" || resp.ProtoMajor != 2 {
			t.Fatalf("%s %q over HTTP/%d", resp.Status, body, resp.ProtoMajor)
		}
	})

	// 64 streams at once, each 1 MiB both ways through 16 KiB stream
	// windows and a 64 KiB connection window: every byte waits for
	// WINDOW_UPDATEs in both directions.
	t.Run("64 concurrent echo streams, flow controlled both ways", func(t *testing.T) {
		before := runtime.NumGoroutine()
		echoStreams(t, client, addr, 64, 1<<20)
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before+4 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before+4 {
			t.Fatalf("%d goroutines after the streams ended, %d before", n, before)
		}
	})
}

// echoStreams runs echoStream on streams streams at once, n bytes each.
func echoStreams(t *testing.T, client *http.Client, addr string, streams, n int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for i := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- echoStream(client, addr, i, n)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// echoStream sends n bytes on a CONNECT stream and checks the echo.
func echoStream(client *http.Client, addr string, seed, n int) error {
	pr, pw := io.Pipe()
	req, _ := http.NewRequest(http.MethodConnect, "https://"+addr, pr)
	req.Host = "web.demo.svc.cluster.local:80"
	sent := sha256.New()
	go func() {
		b := make([]byte, 8<<10)
		for left := n; left > 0; left -= len(b) {
			for i := range b {
				b[i] = byte(seed + i + left)
			}
			sent.Write(b)
			if _, err := pw.Write(b); err != nil {
				return
			}
		}
		_ = pw.Close()
	}()
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	got := sha256.New()
	m, err := io.Copy(got, resp.Body)
	if err != nil {
		return fmt.Errorf("stream %d: after %d bytes: %w", seed, m, err)
	}
	if m != int64(n) || !bytes.Equal(got.Sum(nil), sent.Sum(nil)) {
		return fmt.Errorf("stream %d: %d bytes back, want %d (digest match: %v)", seed, m, n, bytes.Equal(got.Sum(nil), sent.Sum(nil)))
	}
	return nil
}

func TestH2ServerShutdownLetsStreamsFinish(t *testing.T) {
	release := make(chan struct{})
	s := testH2Server(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
		_, _ = io.WriteString(w, "done")
	}))
	client, addr := h2Client(t, s)
	answer := make(chan string, 1)
	go func() {
		resp, err := client.Get("https://" + addr + "/slow")
		if err != nil {
			answer <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		answer <- string(b)
	}()
	for !s.busy() { // the request is in its handler
		time.Sleep(5 * time.Millisecond)
	}
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned (%v) with a stream in flight", err)
	case <-time.After(200 * time.Millisecond):
	}
	if _, err := net.Dial("tcp", addr); err == nil {
		t.Fatal("still accepting after Shutdown")
	}
	close(release)
	if got := <-answer; got != "done" {
		t.Fatalf("the stream in flight got %q", got)
	}
	select {
	case err := <-shut:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return after the last stream")
	}
}

// FuzzH2ServerFrames feeds a connection arbitrary bytes after the client
// preface. Whatever they are, the server must neither panic nor hang:
// once the peer is gone, the connection and every handler end.
// frames returns the bytes of the frames write writes: a fuzz seed.
func frames(write func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer)) []byte {
	var out, hb bytes.Buffer
	fr := http2.NewFramer(&out, nil)
	write(fr, hpack.NewEncoder(&hb), &hb)
	return out.Bytes()
}

// block encodes a header block of name, value pairs.
func block(enc *hpack.Encoder, hb *bytes.Buffer, fields ...string) []byte {
	hb.Reset()
	for i := 0; i+1 < len(fields); i += 2 {
		_ = enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	return bytes.Clone(hb.Bytes())
}

func FuzzH2ServerFrames(f *testing.F) {
	f.Add(frames(func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer) {
		_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1})
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true,
			BlockFragment: block(enc, hb, ":method", "CONNECT", ":authority", "web:80")})
		_ = fr.WriteData(1, false, []byte("hello"))
		_ = fr.WriteWindowUpdate(1, 3)
		_ = fr.WriteData(1, true, []byte("world"))
		_ = fr.WritePing(false, [8]byte{1})
	}))
	f.Add(frames(func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer) {
		_ = fr.WriteSettings(http2.Setting{ID: http2.SettingHeaderTableSize, Val: 0}, http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 14})
		b := block(enc, hb, ":method", "GET", ":scheme", "https", ":path", "/ready", ":authority", "a", "te", "trailers")
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, EndHeaders: false, BlockFragment: b[:len(b)/2]})
		_ = fr.WriteContinuation(3, true, b[len(b)/2:])
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 5, EndHeaders: true,
			BlockFragment: block(enc, hb, ":method", "CONNECT", ":authority", "web:80")})
		_ = fr.WriteRSTStream(5, http2.ErrCodeCancel)
		_ = fr.WriteData(5, false, []byte("late"))
		_ = fr.WriteGoAway(5, http2.ErrCodeNo, nil)
	}))
	f.Add(frames(func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer) {
		_ = fr.WriteSettings()
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true,
			BlockFragment: block(enc, hb, ":method", "CONNECT", ":authority", "web:80")})
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, EndStream: true,
			BlockFragment: block(enc, hb, "x-trailer", "1")})
		_ = fr.WriteWindowUpdate(0, 1<<30)
		_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
	}))
	f.Add([]byte{0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 8, 6, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, input []byte) {
		s := testH2Server(echo)
		s.init()
		client, server := net.Pipe()
		c := s.newConn(server, &tls.ConnectionState{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			c.serve()
		}()
		go func() { _, _ = io.Copy(io.Discard, client) }()
		_, _ = client.Write(append([]byte(http2.ClientPreface), input...))
		_ = client.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("the connection did not end after its peer left")
		}
		// Every stream's handler ends (a stream leaves c.streams when its
		// handler returned).
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
			c.mu.Lock()
			n := c.active
			c.mu.Unlock()
			if n == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d handlers outlived their connection", n)
			}
		}
	})
}

func TestH2ServerFollowsThePeer(t *testing.T) {
	t.Run("a peer that stops reading is cut off after the write timeout", func(t *testing.T) {
		s := testH2Server(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b := make([]byte, 32<<10)
			for {
				if _, err := w.Write(b); err != nil {
					return
				}
			}
		}))
		s.writeTimeout = 400 * time.Millisecond
		p := newRawPeer(t, s, false)
		_ = p.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
		_ = p.fr.WriteWindowUpdate(0, 1<<31-1-initialWindow)
		p.headers(1, true, ":method", "GET", ":scheme", "https", ":path", "/", ":authority", "a")
		// The peer reads nothing: the socket buffers fill, the flush stalls.
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			t.Fatal("a connection whose peer reads nothing was kept")
		}
	})
	t.Run("SETTINGS_INITIAL_WINDOW_SIZE moves the windows of open streams", func(t *testing.T) {
		s := testH2Server(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = w.Write(bytes.Repeat([]byte("a"), 100))
		}))
		p := newRawPeer(t, s, false)
		_ = p.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 10})
		p.headers(1, true, ":method", "GET", ":scheme", "https", ":path", "/", ":authority", "a")
		p.expectStatus(1, "200")
		got := 0
		read := func(want int) {
			for got < want {
				d, ok := p.next().(*http2.DataFrame)
				if !ok {
					t.Fatal("want DATA")
				}
				got += len(d.Data())
			}
		}
		read(10)
		_ = p.conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if f, err := p.fr.ReadFrame(); err == nil {
			if d, ok := f.(*http2.DataFrame); ok && len(d.Data()) > 0 {
				t.Fatalf("%d bytes sent beyond a 10-byte window", len(d.Data()))
			}
		}
		_ = p.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		_ = p.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 100})
		read(100)
		if got != 100 {
			t.Fatalf("%d bytes, want 100", got)
		}
	})
	t.Run("after the peer's GOAWAY streams in flight finish, then the connection ends", func(t *testing.T) {
		release := make(chan struct{})
		s := testH2Server(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			<-release
			_, _ = io.WriteString(w, "done")
		}))
		p := newRawPeer(t, s, true)
		p.headers(1, true, ":method", "GET", ":scheme", "https", ":path", "/", ":authority", "a")
		for !func() bool { s.mu.Lock(); defer s.mu.Unlock(); return len(s.conns) == 1 }() {
			time.Sleep(time.Millisecond)
		}
		_ = p.fr.WriteGoAway(0, http2.ErrCodeNo, nil)
		close(release)
		p.expectStatus(1, "200")
		if d, ok := p.next().(*http2.DataFrame); !ok || string(d.Data()) != "done" {
			t.Fatal("want the answer's DATA")
		}
		for f := p.next(); f != nil; f = p.next() {
			if d, ok := f.(*http2.DataFrame); !ok || !d.StreamEnded() {
				t.Fatalf("after the answer: %v", f)
			}
		}
	})
	t.Run("after Shutdown's GOAWAY new streams are refused, retryable", func(t *testing.T) {
		release := make(chan struct{})
		s := testH2Server(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release }))
		p := newRawPeer(t, s, true)
		p.headers(1, true, ":method", "GET", ":scheme", "https", ":path", "/", ":authority", "a")
		for !s.busy() {
			time.Sleep(time.Millisecond)
		}
		shut := make(chan error, 1)
		go func() { shut <- s.Shutdown(context.Background()) }()
		f := p.next()
		if ga, ok := f.(*http2.GoAwayFrame); !ok || ga.ErrCode != http2.ErrCodeNo || ga.LastStreamID != 1 {
			t.Fatalf("want GOAWAY NO_ERROR up to stream 1, got %v", f)
		}
		p.headers(3, true, ":method", "GET", ":scheme", "https", ":path", "/", ":authority", "a")
		p.expectReset(3, http2.ErrCodeRefusedStream)
		close(release)
		p.expectStatus(1, "200")
		select {
		case err := <-shut:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Shutdown did not return")
		}
	})
}

// busy reports whether a stream's handler runs.
func (s *h2Server) busy() bool { return !s.idle() }
