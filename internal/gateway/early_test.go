package gateway

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
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
// handed on before its failure; the failure resets the stream, so the peer
// sees an error, not the end of the request.
func TestUploadReportsReadErrorsAfterTheirBytes(t *testing.T) {
	type seen struct {
		b   []byte
		err error
	}
	got := make(chan seen, 1)
	pp := startPeer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		b, err := io.ReadAll(r.Body)
		got <- seen{b, err}
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
	close(src.fail)
	select {
	case s := <-got:
		if string(s.b) != "last" || s.err == nil {
			t.Fatalf("the peer read %q, %v; want last, then an error", s.b, s.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the peer's read did not end")
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
