package gateway

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// throttled reads at most chunk bytes per pause: a peer reading steadily.
type throttled struct {
	r     io.Reader
	chunk int
	pause time.Duration
}

func (t throttled) Read(p []byte) (int, error) {
	time.Sleep(t.pause)
	if len(p) > t.chunk {
		p = p[:t.chunk]
	}
	return t.r.Read(p)
}

// TestH2ServerWriteDeadlineFollowsProgress: with several streams writing,
// the buffer is flushed by whichever writer fills it; the deadline must
// move on with every socket write that makes progress, or busy
// connections are cut off (8 streams died after 0.33 s before).
func TestH2ServerWriteDeadlineFollowsProgress(t *testing.T) {
	for _, streams := range []int{1, 8} {
		t.Run(fmt.Sprint(streams, " streams"), func(t *testing.T) {
			var mu sync.Mutex
			var herrs []string
			s := testH2Server(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				b := make([]byte, 16<<10)
				for {
					if _, err := w.Write(b); err != nil {
						mu.Lock()
						herrs = append(herrs, err.Error())
						mu.Unlock()
						return
					}
				}
			}))
			s.writeTimeout = 300 * time.Millisecond
			s.init()
			cli, srv := net.Pipe() // no kernel buffers: a write completes as the peer reads
			done := make(chan struct{})
			go func() { defer close(done); s.serveConn(srv, &tls.ConnectionState{}) }()
			defer func() { _ = cli.Close(); <-done }()
			// The peer reads steadily: 16 KiB per 5 ms, ~3 MB/s; no write ever waits long.
			fr := http2.NewFramer(cli, throttled{cli, 16 << 10, 5 * time.Millisecond})
			fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
			result := make(chan string, 1)
			go func() {
				end := time.Now().Add(3 * time.Second)
				total := 0
				for time.Now().Before(end) {
					f, err := fr.ReadFrame()
					if err != nil {
						result <- fmt.Sprintf("connection ended after %d bytes read: %v", total, err)
						return
					}
					if d, ok := f.(*http2.DataFrame); ok {
						total += len(d.Data())
					}
				}
				result <- fmt.Sprintf("alive after 3s, %d bytes", total)
			}()
			_, _ = io.WriteString(cli, http2.ClientPreface)
			wfr := http2.NewFramer(cli, nil)
			_ = wfr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
			_ = wfr.WriteWindowUpdate(0, 1<<31-1-initialWindow)
			var hb bytes.Buffer
			enc := hpack.NewEncoder(&hb)
			for i := 0; i < streams; i++ {
				hb.Reset()
				for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":path", "/"}, {":authority", "a"}} {
					_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
				}
				_ = wfr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true})
			}
			r := <-result
			mu.Lock()
			defer mu.Unlock()
			if strings.HasPrefix(r, "connection ended") {
				t.Fatalf("%s; handler errors: %q", r, herrs)
			}
			t.Log(r)
		})
	}
}

// TestH2ServerPaddingReturnsToTheStreamWindow: padding was given back to
// the connection's window only, so a padding peer's stream stalled.
func TestH2ServerPaddingReturnsToTheStreamWindow(t *testing.T) {
	s := testH2Server(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	p := newRawPeer(t, s, true)
	p.connect(1)
	p.expectStatus(1, "200")
	streamWin := int64(s.streamWindow)
	pad := make([]byte, 250)
	sent := 0
	for streamWin >= 252 {
		if err := p.fr.WriteDataPadded(1, false, []byte("x"), pad); err != nil {
			t.Fatal(err)
		}
		streamWin -= 252
		sent++
	}
	// Now send whatever the window still allows, unpadded.
	if streamWin > 0 {
		_ = p.fr.WriteData(1, false, make([]byte, streamWin))
		streamWin = 0
	}
	var connInc, streamInc int64
	_ = p.conn.SetReadDeadline(time.Now().Add(time.Second))
	for {
		f, err := p.fr.ReadFrame()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				break
			}
			t.Fatal(err)
		}
		if wu, ok := f.(*http2.WindowUpdateFrame); ok {
			if wu.StreamID == 0 {
				connInc += int64(wu.Increment)
			} else {
				streamInc += int64(wu.Increment)
			}
		}
	}
	t.Logf("%d padded frames; conn WINDOW_UPDATEs +%d, stream +%d", sent, connInc, streamInc)
	if streamInc == 0 {
		t.Fatalf("stream window exhausted (all %d bytes consumed by the handler) and never replenished: the stream is stalled forever", s.streamWindow)
	}
}

// TestH2ServerGoAwayCoversStreamsBeingOpened: a GOAWAY sent while a
// stream's header block was being turned into a request named the stream
// as served, yet found no stream counted and closed the connection after
// its linger, killing it.
func TestH2ServerGoAwayCoversStreamsBeingOpened(t *testing.T) {
	handlerDone := make(chan error, 1)
	s := testH2Server(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
			handlerDone <- r.Context().Err()
		case <-time.After(3 * time.Second):
			_, _ = io.WriteString(w, "done")
			handlerDone <- nil
		}
	}))
	s.maxHeaderBytes = 1 << 20
	p := newRawPeer(t, s, true)
	var c *h2Conn
	for c == nil {
		s.mu.Lock()
		for cc := range s.conns {
			c = cc
		}
		s.mu.Unlock()
	}
	// A large header block makes newRequest take a while.
	fields := []string{":method", "GET", ":scheme", "https", ":path", "/", ":authority", "a"}
	for i := 0; i < 20000; i++ {
		fields = append(fields, fmt.Sprintf("x-h%d", i), "v")
	}
	go func() {
		p.hbuf.Reset()
		for i := 0; i+1 < len(fields); i += 2 {
			_ = p.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
		}
		b := p.hbuf.Bytes()
		frag := b[:16000]
		b = b[16000:]
		_ = p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: frag, EndStream: true})
		for len(b) > 0 {
			frag = b[:min(len(b), 16000)]
			b = b[len(frag):]
			_ = p.fr.WriteContinuation(1, len(b) == 0, frag)
		}
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.mu.Lock()
		seen := c.maxID == 1
		c.mu.Unlock()
		if seen {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("stream 1 never seen")
		}
		runtime.Gosched()
	}
	c.goAway(http2.ErrCodeNo, nil) // what Shutdown does
	start := time.Now()
	var ga *http2.GoAwayFrame
	for {
		f, err := p.fr.ReadFrame()
		if err != nil {
			if ga != nil && (errors.Is(err, io.EOF) || strings.Contains(err.Error(), "reset")) {
				herr := <-handlerDone
				t.Fatalf("GOAWAY promised stream %d; connection closed after %v without an answer; handler: %v",
					ga.LastStreamID, time.Since(start).Round(time.Millisecond), herr)
			}
			t.Fatal(err)
		}
		if g, ok := f.(*http2.GoAwayFrame); ok {
			ga = g
		}
		if h, ok := f.(*http2.MetaHeadersFrame); ok && h.StreamID == 1 {
			t.Logf("stream 1 answered %s", h.PseudoValue("status"))
			return
		}
	}
}

// TestTunnelEndsWithItsStream: a tunnel whose backend never answers nor
// closes held its handler (and its slot among the connection's streams)
// after the peer reset the stream; the stream's end now closes the
// backend connection.
func TestTunnelEndsWithItsStream(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	testDone := make(chan struct{})
	defer close(testDone)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		// A backend that reads the request, ignores the half-close and
		// never answers nor closes.
		_, _ = io.Copy(io.Discard, c)
		<-testDone
		_ = c.Close()
	}()
	g := &Gateway{metrics: newMetrics(prometheus.NewRegistry()), drain: newDrainTracker()}
	in := &inboundServer{g: g}
	handlerDone := make(chan struct{})
	s := testH2Server(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(handlerDone)
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
	_ = p.fr.WriteData(1, true, []byte("hello")) // then the half-close
	time.Sleep(50 * time.Millisecond)
	_ = p.fr.WriteRSTStream(1, http2.ErrCodeCancel)
	select {
	case <-handlerDone:
	case <-time.After(5 * time.Second):
		t.Fatal("the tunnel outlived its reset stream")
	}
}

// TestH2ServerWritesUploadsToTheBackendInOrder: a tunnel's request bytes
// reach a socket backend in order and complete whether the frame reader
// writes them itself (the backend's socket takes them at once) or queues
// them for the stream's upload (its buffer is full: a backend with a small
// receive buffer that reads in bursts with pauses), across many streams
// sharing the connection.
func TestH2ServerWritesUploadsToTheBackendInOrder(t *testing.T) {
	backends := serveTCP(t, func(c net.Conn) {
		_ = c.(*net.TCPConn).SetReadBuffer(4 << 10)
		b := make([]byte, 3000)
		for i := 0; ; i++ {
			n, err := c.Read(b)
			if n > 0 {
				if _, werr := c.Write(b[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				closeWrite(c)
				return
			}
			if i%16 == 0 {
				time.Sleep(time.Millisecond) // the backend pauses: its buffer fills
			}
		}
	})
	var direct, queued atomic.Int64
	s := testH2Server(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		backend, err := net.Dial("tcp", backends)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer func() { _ = backend.Close() }()
		fw := newFlushWriter(w)
		w.WriteHeader(http.StatusOK)
		_ = fw.f.FlushError()
		up := make(chan struct{})
		go func() {
			defer close(up)
			n, _ := uploadTo(backend, r.Body)
			b := r.Body.(*h2Body)
			b.st.c.mu.Lock()
			d := b.st.sinkWritten
			b.st.c.mu.Unlock()
			direct.Add(d)
			queued.Add(n - d)
			closeWrite(backend)
		}()
		_, _ = copyBuffered(fw, backend)
		<-up
	}))
	client, addr := h2Client(t, s)
	echoStreams(t, client, addr, 8, 1<<20)
	t.Logf("written by the frame reader: %d bytes; queued for the upload: %d", direct.Load(), queued.Load())
	if total := direct.Load() + queued.Load(); total != 8<<20 {
		t.Fatalf("the backends were given %d bytes, want %d", total, 8<<20)
	}
	if direct.Load() == 0 {
		t.Error("the frame reader wrote nothing to the backends itself")
	}
}
