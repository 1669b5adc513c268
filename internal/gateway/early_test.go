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

// readAsync starts one Read of b into a 64-byte buffer.
func readAsync(b *attemptBody) <-chan readResult {
	ch := make(chan readResult, 1)
	go func() {
		buf := make([]byte, 64)
		n, err := b.Read(buf)
		ch <- readResult{buf[:n], err}
	}()
	return ch
}

func waitRead(t *testing.T, ch <-chan readResult) readResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("read still blocked after 10 s")
		return readResult{}
	}
}

// TestUploadAttemptsKeepBytesInOrder: the application's bytes are read by
// whichever attempt asks; an attempt given up while it waits in a read
// ends that read at once, and bytes that arrive for it go first on the
// next attempt, so nothing is lost, reordered or sent twice.
func TestUploadAttemptsKeepBytesInOrder(t *testing.T) {
	app, gw := net.Pipe()
	defer func() { _ = app.Close(); _ = gw.Close() }()
	var u upload
	u.init(gw)

	// An attempt abandoned while the application is silent returns at once.
	var first attemptBody
	first.init(&u)
	ch := readAsync(&first)
	time.Sleep(20 * time.Millisecond) // let it block in the read
	_ = first.Close()
	if r := waitRead(t, ch); !errors.Is(r.err, errAbandoned) || len(r.b) != 0 {
		t.Fatalf("abandoned attempt's read: %q, %v; want nothing, errAbandoned", r.b, r.err)
	}
	if first.consumed.Load() != 0 {
		t.Fatalf("abandoned attempt consumed %d bytes", first.consumed.Load())
	}

	// The next attempt reads normally: the interrupting deadline is gone.
	var second attemptBody
	second.init(&u)
	go func() { _, _ = app.Write([]byte("hello")) }()
	if r := waitRead(t, readAsync(&second)); string(r.b) != "hello" || r.err != nil {
		t.Fatalf("second attempt read %q, %v; want hello", r.b, r.err)
	}

	// Bytes that a given-up attempt's read returns with (the read ended
	// before the interruption could) go first on the next attempt, which
	// waited for that read.
	u.src = lateDeadline{gw}
	var third, fourth attemptBody
	third.init(&u)
	fourth.init(&u)
	ch = readAsync(&third)
	time.Sleep(20 * time.Millisecond)
	_ = third.Close()
	ch4 := readAsync(&fourth)
	go func() { _, _ = app.Write([]byte("held")) }()
	if r := waitRead(t, ch); !errors.Is(r.err, errAbandoned) {
		t.Fatalf("given-up attempt's read: %q, %v; want errAbandoned", r.b, r.err)
	}
	if r := waitRead(t, ch4); string(r.b) != "held" || r.err != nil {
		t.Fatalf("next attempt read %q, %v; want the held bytes", r.b, r.err)
	}
	if n := fourth.consumed.Load(); n != 4 {
		t.Fatalf("next attempt consumed %d, want 4", n)
	}
	u.src = gw

	// The application half-closes: EOF, once and for every later read;
	// WaitSent's channel is closed.
	_ = app.Close()
	if r := waitRead(t, readAsync(&fourth)); r.err != io.EOF {
		t.Fatalf("read after the application closed: %v, want io.EOF", r.err)
	}
	select {
	case <-u.done:
	default:
		t.Fatal("the upload did not record the application's end")
	}
	if r := waitRead(t, readAsync(&fourth)); r.err != io.EOF {
		t.Fatalf("second read after the end: %v, want io.EOF", r.err)
	}
}

// lateDeadline is a connection whose read deadline cannot end a read
// already under way.
type lateDeadline struct{ net.Conn }

func (lateDeadline) SetReadDeadline(time.Time) error { return nil }

// errReader returns its bytes together with a failure.
type errReader struct {
	b   []byte
	err error
}

func (r *errReader) Read(p []byte) (int, error)      { return copy(p, r.b), r.err }
func (r *errReader) SetReadDeadline(time.Time) error { return nil }

// TestUploadReportsReadErrorsAfterTheirBytes: a failed read's bytes are
// handed on first; the error (a reset, not END_STREAM) comes next.
func TestUploadReportsReadErrorsAfterTheirBytes(t *testing.T) {
	boom := errors.New("connection reset")
	var u upload
	u.init(&errReader{b: []byte("last"), err: boom})
	var b attemptBody
	b.init(&u)
	buf := make([]byte, 16)
	if n, err := b.Read(buf); string(buf[:n]) != "last" || err != nil {
		t.Fatalf("first read: %q, %v; want last, nil", buf[:n], err)
	}
	if _, err := b.Read(buf); !errors.Is(err, boom) {
		t.Fatalf("second read: %v, want the read error", err)
	}
}

// TestStreamEndsWhileTheApplicationIsSilent: when the peer ends a stream
// whose application sends nothing, closing the stream does not wait for
// the application (the transport waits for the body's read to return).
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
