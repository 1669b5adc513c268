package gateway

import (
	"errors"
	"io"
	"os"
	"testing"
	"time"
)

// TestStreamConnReadDeadline: net/http's server aborts its background read
// with a deadline in the past and reads on afterwards (Hijack does, and
// every finished response); the aborted read's bytes must not be lost.
func TestStreamConnReadDeadline(t *testing.T) {
	pr, pw := io.Pipe()
	c := newStreamConn(pr, io.Discard)
	defer func() { _ = c.Close() }()

	aborted := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 16))
		aborted <- err
	}()
	time.Sleep(10 * time.Millisecond) // the read is pending on the stream
	_ = c.SetReadDeadline(time.Unix(1, 0))
	select {
	case err := <-aborted:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("the aborted read returned %v, want a timeout", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a deadline in the past did not interrupt the pending read")
	}

	_ = c.SetReadDeadline(time.Time{})
	go func() { _, _ = pw.Write([]byte("GET / HTTP/1.1\r\n")) }()
	got := make([]byte, 4)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "GET " {
		t.Fatalf("after the deadline was lifted read %q, %v", got, err)
	}
	rest := make([]byte, 12)
	if _, err := io.ReadFull(c, rest); err != nil || string(rest) != "/ HTTP/1.1\r\n" {
		t.Fatalf("the rest of the aborted read: %q, %v", rest, err)
	}

	_ = c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := c.Read(got); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a read past its deadline returned %v", err)
	}
	_ = pw.CloseWithError(io.ErrUnexpectedEOF)
	_ = c.SetReadDeadline(time.Time{})
	if _, err := c.Read(got); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("the stream's error came back as %v", err)
	}
}
