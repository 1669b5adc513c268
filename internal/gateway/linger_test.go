package gateway

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// An answer that ends while the application still uploads — a backend
// that refuses a large request with an error and closes — reaches the
// application whole. Closing the application's socket with its upload
// unread would reset it, and the reset throws away the end of the answer
// still in the gateway's send buffer.
//
// backbone's own inbound server ends the answer alone and lets the upload
// go on (TestBackendHalfCloseLetsTheUploadGoOn); net/http's, like a peer
// that cannot, ends the stream when the backend ends its side, and the
// calling gateway lingers.
func TestAnAnswerEndingBeforeTheUploadArrivesWhole(t *testing.T) {
	defer func(k string) { testInboundServer = k }(testInboundServer)
	testInboundServer = InboundServerNetHTTP
	answer := bytes.Repeat([]byte("backbone answers before the upload ends. "), 100_000) // ~4 MiB
	app, done := throughGateways(t, func(c net.Conn) {
		if _, err := c.Write(answer); err != nil {
			return
		}
		// The backend ends its side and reads on until the caller's
		// end, as a well-behaved server does: it is not the one that
		// resets here.
		closeWrite(c)
		_, _ = io.Copy(io.Discard, c)
	})
	defer func() { _ = app.Close() }()
	if tc, ok := app.(*net.TCPConn); ok {
		_ = tc.SetReadBuffer(16 << 10) // the answer waits in the gateway's send buffer
	}

	stopUpload := make(chan struct{})
	uploaded := make(chan struct{})
	go func() {
		defer close(uploaded)
		chunk := make([]byte, 32<<10)
		for {
			select {
			case <-stopUpload:
				return
			default:
			}
			if _, err := app.Write(chunk); err != nil {
				return
			}
		}
	}()

	_ = app.SetReadDeadline(time.Now().Add(20 * time.Second))
	var got bytes.Buffer
	buf := make([]byte, 4<<10)
	var readErr error
	for {
		n, err := app.Read(buf)
		got.Write(buf[:n])
		if err != nil {
			readErr = err
			break
		}
		if got.Len()%(256<<10) < n {
			time.Sleep(2 * time.Millisecond) // a slow reader
		}
	}
	close(stopUpload)
	if !errors.Is(readErr, io.EOF) {
		t.Errorf("the answer ended with %v after %d of %d bytes, want io.EOF after all of them", readErr, got.Len(), len(answer))
	}
	if !bytes.Equal(got.Bytes(), answer) {
		t.Errorf("got %d bytes, want the %d of the answer", got.Len(), len(answer))
	}
	_ = app.Close()
	<-uploaded
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the gateway still holds the connection 10 s after the application closed it")
	}
}

// The gateway reads on after the answer for a bounded time only: an
// application that sends forever, or stops sending and never closes,
// does not hold the connection.
func TestLingerIsBounded(t *testing.T) {
	defer func(k string) { testInboundServer = k }(testInboundServer)
	testInboundServer = InboundServerNetHTTP
	defer func(total, idle time.Duration) { lingerTime, lingerIdle = total, idle }(lingerTime, lingerIdle)
	lingerTime, lingerIdle = 400*time.Millisecond, 200*time.Millisecond
	for _, tc := range []struct {
		name    string
		forever bool // sends until the gateway closes, else stops and waits
	}{
		{"sends forever", true},
		{"stops sending and stays open", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			app, done := throughGateways(t, func(c net.Conn) {
				_, _ = c.Write([]byte("refused"))
				closeWrite(c)
				_, _ = io.Copy(io.Discard, c)
			})
			defer func() { _ = app.Close() }()
			writeErr := make(chan error, 1)
			go func() {
				chunk := make([]byte, 4<<10)
				for i := 0; tc.forever || i < 16; i++ {
					if _, err := app.Write(chunk); err != nil {
						writeErr <- err
						return
					}
					time.Sleep(time.Millisecond)
				}
				writeErr <- nil
			}()
			got, err := io.ReadAll(app)
			if err != nil || string(got) != "refused" {
				t.Fatalf("answer %q, %v; want %q and its end", got, err, "refused")
			}
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("the gateway still held the connection 10 s after its answer ended")
			}
			if tc.forever {
				if err := <-writeErr; err == nil {
					t.Error("the application's writes never failed, want them to once the gateway closed")
				}
			}
		})
	}
}
