package faultproxy

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// echoServer echoes until the client half-closes, then half-closes too.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer func() { _ = c.Close() }()
				_, _ = io.Copy(c, c)
				_ = c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	return ln.Addr().String()
}

func newProxy(t *testing.T) *Proxy {
	t.Helper()
	p, err := New("127.0.0.1:0", echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func TestBytesArriveIntactAndHalfCloseCrossesTheProxy(t *testing.T) {
	p := newProxy(t)
	p.SetLatency(time.Millisecond)
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	payload := make([]byte, 4<<20)
	_, _ = rand.Read(payload)
	go func() {
		_, _ = c.Write(payload)
		_ = c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c) // ends only if the echo's half-close came back
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != sha256.Sum256(payload) {
		t.Fatalf("payload corrupted: got %d bytes, want %d", len(got), len(payload))
	}
}

// TestLatencyIsAtLeastWhatWasAsked checks only the lower bound a sleep
// guarantees: a connect plus one exchange crosses the link four times.
func TestLatencyIsAtLeastWhatWasAsked(t *testing.T) {
	p := newProxy(t)
	const oneWay = 15 * time.Millisecond
	p.SetLatency(oneWay)
	start := time.Now()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 4*oneWay {
		t.Fatalf("first byte back after %v, less than handshake + request + response = %v", took, 4*oneWay)
	}
}

func TestResetAllAbortsOpenConnections(t *testing.T) {
	p := newProxy(t)
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	p.ResetAll()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = c.Read(make([]byte, 1))
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("want the connection reset, got %v", err)
	}
}

func TestRefusedLinkClosesNewConnections(t *testing.T) {
	p := newProxy(t)
	p.SetRefuse(true)
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		return // reset during the handshake: refused as well
	}
	defer func() { _ = c.Close() }()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = c.Read(make([]byte, 1))
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("want the connection closed, got %v", err)
	}
}

func TestStalledLinkHoldsBytesUntilResumed(t *testing.T) {
	p := newProxy(t)
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	p.SetStalled(true)
	if _, err := c.Write([]byte("held")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := c.Read(make([]byte, 4)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a stalled link delivered %d bytes (err %v)", n, err)
	}
	p.SetStalled(false)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, 4)
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, []byte("held")) {
		t.Fatalf("after resuming: %q, %v", got, err)
	}
}

func TestCloseLeavesNoConnectionsBehind(t *testing.T) {
	p, err := New("127.0.0.1:0", echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		c, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = c.Close() }()
		_, _ = c.Write([]byte("x"))
		_, _ = io.ReadFull(c, make([]byte, 1))
	}
	if p.Open() != 5 {
		t.Fatalf("%d connections open, want 5", p.Open())
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if p.Open() != 0 {
		t.Fatalf("%d connections left after Close", p.Open())
	}
}

// sendAndEcho writes n bytes on a new connection and reads them back.
func sendAndEcho(t *testing.T, p *Proxy, n int) (net.Conn, chan error) {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	go func() { _, _ = c.Write(make([]byte, n)) }()
	done := make(chan error, 1)
	go func() {
		_, err := io.ReadFull(c, make([]byte, n))
		done <- err
	}()
	return c, done
}

func TestLinkBandwidthIsSharedButBacklogsAreNot(t *testing.T) {
	p := newProxy(t)
	const bw = 1 << 20
	p.SetLinkBandwidth(bw)
	start := time.Now()
	_, bulkA := sendAndEcho(t, p, 512<<10)
	_, bulkB := sendAndEcho(t, p, 512<<10)
	time.Sleep(100 * time.Millisecond)
	if q := p.Queued(); q < 256<<10 {
		t.Errorf("%d bytes queued behind a 1 MiB/s link fed 1 MiB at once, want at least 256 KiB", q)
	}
	// A connection with no backlog of its own crosses the busy link
	// without waiting behind the others' bytes.
	_, small := sendAndEcho(t, p, 1)
	if err := <-small; err != nil {
		t.Fatal(err)
	}
	select {
	case <-bulkA:
		t.Error("a small exchange waited for a bulk transfer on another connection")
	default:
	}
	for _, done := range []chan error{bulkA, bulkB} {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	// 1 MiB through a shared 1 MiB/s link, each way: at least a second.
	if took := time.Since(start); took < 900*time.Millisecond {
		t.Errorf("1 MiB crossed a 1 MiB/s link in %s: the limit is not shared", took)
	}
	// The proxy counts a chunk delivered once its write returned, which
	// may be just after the reader had it.
	deadline := time.Now().Add(5 * time.Second)
	for p.Queued() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if q := p.Queued(); q != 0 {
		t.Errorf("%d bytes still queued after every transfer completed", q)
	}
}
