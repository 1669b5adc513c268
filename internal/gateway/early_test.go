package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/identity"
)

// failingReader returns its bytes, then, once fail is closed, an error.
type failingReader struct {
	b    []byte
	fail chan struct{}
	err  error
}

func (r *failingReader) Read(p []byte) (int, error) {
	if len(r.b) > 0 {
		n := copy(p, r.b)
		r.b = r.b[n:]
		return n, nil
	}
	<-r.fail
	return 0, r.err
}

// TestUploadReportsReadErrorsAfterTheirBytes: the application's bytes are
// handed on as they come; when its connection then fails, the stream is
// reset, so the peer sees an error, not the end of the request.
func TestUploadReportsReadErrorsAfterTheirBytes(t *testing.T) {
	type seen struct {
		b   []byte
		err error
	}
	first, rest := make(chan seen, 1), make(chan seen, 1)
	pp := startPeer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		b := make([]byte, 4)
		_, err := io.ReadFull(r.Body, b)
		first <- seen{b, err}
		b, err = io.ReadAll(r.Body)
		rest <- seen{b, err}
	}), 5*time.Second, nil)
	boom := errors.New("connection reset")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src := &failingReader{b: []byte("last"), fail: make(chan struct{}), err: boom}
	st, err := pp.pool.OpenStream(ctx, "east", "web.demo.svc.cluster.local:80", src)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = st.Close() }()
	wait := func(ch chan seen) seen {
		select {
		case s := <-ch:
			return s
		case <-time.After(10 * time.Second):
			t.Fatal("the peer's read did not end")
			return seen{}
		}
	}
	if s := wait(first); string(s.b) != "last" || s.err != nil {
		t.Fatalf("the peer read %q, %v; want last", s.b, s.err)
	}
	close(src.fail)
	if s := wait(rest); len(s.b) != 0 || s.err == nil {
		t.Fatalf("after the application failed the peer read %q, %v; want an error", s.b, s.err)
	}
	if err := st.WaitSent(); !errors.Is(err, boom) {
		t.Fatalf("WaitSent: %v, want the read error", err)
	}
	if st.Sent() != 4 {
		t.Fatalf("sent %d bytes, want 4", st.Sent())
	}
	if _, err := io.ReadAll(st.Down); err == nil {
		t.Fatal("the answer ended cleanly after the application failed")
	}
}

// TestStreamEndsWhileTheApplicationIsSilent: when the peer ends a stream
// whose application sends nothing, closing the stream does not wait for
// the application.
func TestStreamEndsWhileTheApplicationIsSilent(t *testing.T) {
	pp := startPeer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("bye"))
	}), 5*time.Second, nil)
	app, gw := net.Pipe()
	defer func() { _ = app.Close(); _ = gw.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := pp.pool.OpenStream(ctx, "east", "web.demo.svc.cluster.local:80", gw)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(st.Down)
	if err != nil || !bytes.Equal(got, []byte("bye")) {
		t.Fatalf("answer %q, %v; want bye", got, err)
	}
	closed := make(chan error, 1)
	go func() { closed <- st.Close() }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("closing the stream waited for the silent application")
	}
	if err := st.WaitSent(); err != nil {
		t.Fatalf("WaitSent: %v", err)
	}
	if st.Sent() != 0 {
		t.Fatalf("sent %d bytes, want 0", st.Sent())
	}
}

// rawGateway is a peer gateway speaking raw frames over mTLS, with the
// settings given; onData sees every stream's bytes so far, each time
// DATA arrives, and answers with the framer and an HPACK encoder.
func rawGateway(t *testing.T, server *tls.Config, settings []http2.Setting, onData func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer, id uint32, data []byte)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		nc, err := l.Accept()
		if err != nil {
			return
		}
		tc := tls.Server(nc, server)
		defer func() { _ = tc.Close() }()
		preface := make([]byte, len(http2.ClientPreface))
		if _, err := io.ReadFull(tc, preface); err != nil {
			return
		}
		fr := http2.NewFramer(tc, tc)
		fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		var hb bytes.Buffer
		enc := hpack.NewEncoder(&hb)
		_ = fr.WriteSettings(settings...)
		data := map[uint32][]byte{}
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					_ = fr.WriteSettingsAck()
				}
			case *http2.DataFrame:
				data[f.StreamID] = append(data[f.StreamID], f.Data()...)
				onData(fr, enc, &hb, f.StreamID, data[f.StreamID])
			}
		}
	}()
	return l.Addr().String()
}

// rawAnswer sends a 200 answer's header block.
func rawAnswer(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer, id uint32) {
	hb.Reset()
	_ = enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true})
}

// rawPool is a pool whose one link leads to addr.
func rawPool(t *testing.T, west *identity.Files, addr string) *Pool {
	host, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	pool := NewPool(west, 5*time.Second, slog.New(slog.DiscardHandler), nil)
	t.Cleanup(pool.Close)
	pool.Ensure(v1alpha1.Link{Spec: v1alpha1.LinkSpec{TargetClusterName: "east",
		GatewayAddresses: []v1alpha1.GatewayAddress{{Host: host, Port: int32(p)}},
		GatewayIdentity:  "spiffe://bench.test/cluster/east"}})
	return pool
}

// TestUnprocessedStreamIsRetriedWithItsBytes: the application's first
// bytes go with the CONNECT; a peer that refuses the stream (REFUSED_STREAM:
// it did not process it) gets them again on the next attempt, exactly
// once. Any other reset after bytes went fails the stream: they may have
// been delivered.
func TestUnprocessedStreamIsRetriedWithItsBytes(t *testing.T) {
	for _, tc := range []struct {
		code    http2.ErrCode
		wantErr bool
	}{{http2.ErrCodeRefusedStream, false}, {http2.ErrCodeCancel, true}} {
		t.Run(tc.code.String(), func(t *testing.T) {
			east, west := testIdentities(t)
			seen := make(chan string, 8)
			addr := rawGateway(t, east.ServerTLS("h2"), nil, func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer, id uint32, data []byte) {
				if len(data) < 5 {
					return
				}
				seen <- fmt.Sprintf("%d:%s", id, data)
				if id == 1 {
					_ = fr.WriteRSTStream(id, tc.code)
					return
				}
				rawAnswer(fr, enc, hb, id)
				_ = fr.WriteData(id, true, data)
			})
			pool := rawPool(t, west, addr)
			app, gw := net.Pipe()
			defer func() { _ = app.Close(); _ = gw.Close() }()
			go func() { _, _ = app.Write([]byte("hello")) }()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			st, err := pool.OpenStream(ctx, "east", "web.demo.svc.cluster.local:80", gw)
			if first := <-seen; first != "1:hello" {
				t.Fatalf("the first attempt carried %q", first)
			}
			if tc.wantErr {
				if err == nil {
					t.Fatal("a stream reset after its bytes went was retried")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = st.Close() }()
			if second := <-seen; second != "3:hello" {
				t.Fatalf("the retry carried %q, want the same bytes once", second)
			}
			b := make([]byte, 5)
			if _, err := io.ReadFull(st.Down, b); err != nil || string(b) != "hello" {
				t.Fatalf("answer %q, %v", b, err)
			}
			if st.Sent() != 5 {
				t.Fatalf("Sent %d, want 5", st.Sent())
			}
		})
	}
}

// TestAnswerDoesNotWaitForTheUpload: the peer answers while the upload
// waits for the stream's window (the peer reads no more until its answer
// is read, as an echo backend does); the answer reaches the caller.
func TestAnswerDoesNotWaitForTheUpload(t *testing.T) {
	east, west := testIdentities(t)
	answered := false
	addr := rawGateway(t, east.ServerTLS("h2"), []http2.Setting{{ID: http2.SettingInitialWindowSize, Val: 10}},
		func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer, id uint32, data []byte) {
			if !answered { // answer, and grant no window
				answered = true
				rawAnswer(fr, enc, hb, id)
				_ = fr.WriteData(id, false, []byte("answer"))
			}
		})
	pool := rawPool(t, west, addr)
	app, gw := net.Pipe()
	defer func() { _ = app.Close(); _ = gw.Close() }()
	// More than any window the stream may start with: the upload blocks.
	go func() { _, _ = app.Write(bytes.Repeat([]byte("u"), 256<<10)) }()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	opened := make(chan error, 1)
	var st *Stream
	go func() {
		var err error
		st, err = pool.OpenStream(ctx, "east", "web.demo.svc.cluster.local:80", gw)
		opened <- err
	}()
	select {
	case err := <-opened:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the answer waited behind an upload blocked on the peer's window")
	}
	defer func() { _ = st.Close() }()
	b := make([]byte, 6)
	if _, err := io.ReadFull(st.Down, b); err != nil || string(b) != "answer" {
		t.Fatalf("answer %q, %v", b, err)
	}
}
