package tcpstate

import (
	"io"
	"net"
	"runtime"
	"testing"
	"time"
)

// TestWasReset: after EOF, a peer's reset and a peer's clean end (its
// half-close) are told apart, also when a write took the reset's error
// first.
func TestWasReset(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the connection's state is read on Linux only")
	}
	for _, tc := range []struct {
		name  string
		reset bool
	}{{"the peer ends cleanly", false}, {"the peer resets", true}} {
		t.Run(tc.name, func(t *testing.T) {
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
				buf := make([]byte, 4)
				_, _ = io.ReadFull(c, buf)
				if tc.reset {
					_ = c.(*net.TCPConn).SetLinger(0)
					_ = c.Close()
					return
				}
				// A clean end of its side; it reads on.
				_ = c.(*net.TCPConn).CloseWrite()
				_, _ = io.Copy(io.Discard, c)
				_ = c.Close()
			}()
			c, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = c.Close() }()
			if _, err := c.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond)
			// A write takes the reset's error, if there is one, first.
			_, _ = c.Write([]byte("more"))
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err != io.EOF && !tc.reset {
				t.Fatalf("read: %v, want EOF", err)
			}
			if got := WasReset(c); got != tc.reset {
				t.Errorf("WasReset = %v, want %v", got, tc.reset)
			}
		})
	}
}
