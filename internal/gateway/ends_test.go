package gateway

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/backbone-mesh/backbone/internal/tcpstate"
)

// Each side's end travels as it happened: a clean end as a half-close,
// a failure as a failure, whichever side it comes from.

// tunnelTo is a peer handler tunnelling to a TCP backend at addr.
func tunnelTo(addr string) func(*inboundServer, http.ResponseWriter, *http.Request) {
	return func(ps *inboundServer, w http.ResponseWriter, r *http.Request) {
		b, err := net.Dial("tcp", addr)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		ps.tunnel(w, r, "west", b)
	}
}

type copyResult struct {
	n   int64
	err error
}

// TestBackendHalfCloseLetsTheUploadGoOn: a backend that answers, ends its
// side and reads on gets the whole request and the caller's own end; the
// application gets the whole answer and its end. Each direction of the
// tunnel ends on its own, as a TCP connection's do.
func TestBackendHalfCloseLetsTheUploadGoOn(t *testing.T) {
	got := make(chan copyResult, 1)
	addr := serveTCP(t, func(c net.Conn) {
		_, _ = c.Write([]byte("ready"))
		closeWrite(c)
		n, err := io.Copy(io.Discard, c)
		got <- copyResult{n, err}
	})
	app, done := throughGatewaysTo(t, context.Background(), tunnelTo(addr))
	_ = app.SetDeadline(time.Now().Add(20 * time.Second))
	answer, err := io.ReadAll(app) // the answer ends before the request
	if err != nil || string(answer) != "ready" {
		t.Fatalf("answer %q, %v; want %q and its end", answer, err, "ready")
	}
	upload := bytes.Repeat([]byte("u"), 1<<20)
	if _, err := app.Write(upload); err != nil {
		t.Fatalf("the request after the answer's end: %v", err)
	}
	_ = app.(*net.TCPConn).CloseWrite()
	select {
	case r := <-got:
		if r.err != nil || r.n != int64(len(upload)) {
			t.Errorf("the backend read %d bytes and %v, want %d and the caller's end", r.n, r.err, len(upload))
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the backend never saw the caller's end")
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the tunnel outlived both ends")
	}
}

// TestBackendResetReachesTheApplication: a backend that resets its
// connection mid-answer, while the application is still uploading,
// fails the application's connection; it must not read the cut-off
// answer and a clean end. (The upload's failed write to the backend
// came first, and closing the backend then made the answer's read end
// as if cleanly.)
func TestBackendResetReachesTheApplication(t *testing.T) {
	for _, kind := range []string{InboundServerBackbone, InboundServerNetHTTP} {
		t.Run("inbound="+strings.ReplaceAll(kind, "/", ""), func(t *testing.T) {
			defer func(k string) { testInboundServer = k }(testInboundServer)
			testInboundServer = kind
			clean := 0
			for range 5 {
				addr := serveTCP(t, func(c net.Conn) {
					buf := make([]byte, 64<<10)
					_, _ = io.ReadFull(c, buf)
					_, _ = c.Write([]byte("partial"))
					time.Sleep(50 * time.Millisecond)
					tcpstate.Abort(c)
				})
				app, done := throughGatewaysTo(t, context.Background(), tunnelTo(addr))
				stop := make(chan struct{})
				wrote := make(chan error, 1)
				go func() {
					chunk := make([]byte, 16<<10)
					for {
						select {
						case <-stop:
							wrote <- nil
							return
						default:
						}
						if _, err := app.Write(chunk); err != nil {
							wrote <- err
							return
						}
					}
				}()
				_ = app.SetReadDeadline(time.Now().Add(10 * time.Second))
				got, err := io.ReadAll(app)
				if errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("no end within 10 s after %q", got)
				}
				// The kernel reports a reset once, to whichever call
				// comes first: the uploading write, or the read.
				time.Sleep(50 * time.Millisecond)
				close(stop)
				werr := <-wrote
				if err == nil && !errors.Is(werr, syscall.ECONNRESET) {
					clean++
					t.Logf("read %q and a clean end; the upload's write: %v", got, werr)
				}
				_ = app.Close()
				<-done
			}
			if clean > 0 {
				t.Errorf("%d of 5: the backend's reset reached the application as a clean end", clean)
			}
		})
	}
}

// TestCallerFailureReachesTheBackend: the calling side failing mid-upload
// — the application resetting its connection, or the tunnel's connection
// closing under the stream — fails the backend's connection too. A clean
// end would pass the cut-off request for a complete one.
func TestCallerFailureReachesTheBackend(t *testing.T) {
	for _, tc := range []struct {
		name string
		fail func(app net.Conn, inbound *h2Conn)
	}{
		{"the application resets", func(app net.Conn, _ *h2Conn) { tcpstate.Abort(app) }},
		{"the tunnel's connection closes", func(_ net.Conn, inbound *h2Conn) { inbound.close() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for range 5 {
				got := make(chan copyResult, 1)
				addr := serveTCP(t, func(c net.Conn) {
					n, err := io.Copy(io.Discard, c)
					got <- copyResult{n, err}
				})
				inbound := make(chan *h2Conn, 1)
				app, done := throughGatewaysTo(t, context.Background(), func(ps *inboundServer, w http.ResponseWriter, r *http.Request) {
					inbound <- w.(*h2ResponseWriter).st.c
					tunnelTo(addr)(ps, w, r)
				})
				if _, err := app.Write(make([]byte, 64<<10)); err != nil {
					t.Fatal(err)
				}
				c := <-inbound
				time.Sleep(100 * time.Millisecond) // the bytes reached the backend
				tc.fail(app, c)
				select {
				case r := <-got:
					if r.err == nil {
						t.Fatalf("the backend read %d bytes and a clean end", r.n)
					}
				case <-time.After(10 * time.Second):
					t.Fatal("the backend's connection never ended")
				}
				_ = app.Close()
				<-done
			}
		})
	}
}

// TestDrainTimeoutFailsTheTunnelsStillOpen: at the drain timeout (the
// streams' context ends) a tunnel still carrying an answer fails the
// application's connection. Left to the process's exit, the kernel would
// end it cleanly after a cut-off answer.
func TestDrainTimeoutFailsTheTunnelsStillOpen(t *testing.T) {
	addr := serveTCP(t, func(c net.Conn) {
		buf := make([]byte, 4<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	app, done := throughGatewaysTo(t, ctx, tunnelTo(addr))
	_ = app.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(app, make([]byte, 4<<10)); err != nil {
		t.Fatal(err)
	}
	read := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, app); read <- err }()
	cancel() // the drain timeout
	select {
	case err := <-read:
		if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("the application's answer ended with %v, want a reset", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the application's connection outlived the drain timeout")
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("serveOutbound still runs after the drain timeout")
	}
}

// TestPeerGoneAfterTheAnswerFailsTheRequest: once the answer has ended
// and the application goes on sending (a half-closed tunnel), the peer
// gateway going away cuts its request off: the application's connection
// is reset, not drained as if its request had reached the backend.
func TestPeerGoneAfterTheAnswerFailsTheRequest(t *testing.T) {
	addr := serveTCP(t, func(c net.Conn) {
		_, _ = c.Write([]byte("ready"))
		closeWrite(c)
		_, _ = io.Copy(io.Discard, c)
	})
	inbound := make(chan *h2Conn, 1)
	app, done := throughGatewaysTo(t, context.Background(), func(ps *inboundServer, w http.ResponseWriter, r *http.Request) {
		inbound <- w.(*h2ResponseWriter).st.c
		tunnelTo(addr)(ps, w, r)
	})
	_ = app.SetDeadline(time.Now().Add(20 * time.Second))
	if got, err := io.ReadAll(app); err != nil || string(got) != "ready" {
		t.Fatalf("answer %q, %v", got, err)
	}
	c := <-inbound
	chunk := make([]byte, 16<<10)
	if _, err := app.Write(chunk); err != nil {
		t.Fatal(err)
	}
	c.close() // the peer gateway goes away
	var werr error
	for range 2000 {
		if _, werr = app.Write(chunk); werr != nil {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if !errors.Is(werr, syscall.ECONNRESET) && !errors.Is(werr, syscall.EPIPE) {
		t.Errorf("the application's writes after the peer went away: %v, want a reset", werr)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the tunnel outlived its peer")
	}
}

// TestAQuietHalfClosedTunnelEnds: after the answer's end, an application
// that keeps its side open and sends nothing (a pool's idle connection
// whose backend closed it) does not hold the tunnel, and a slot of the
// peer's stream limit, for ever: it ends after the half-close idle time.
// One that keeps sending stays.
func TestAQuietHalfClosedTunnelEnds(t *testing.T) {
	defer func(d time.Duration) { halfCloseIdle = d }(halfCloseIdle)
	halfCloseIdle = 300 * time.Millisecond
	for _, tc := range []struct {
		name  string
		sends bool
	}{{"quiet", false}, {"sending", true}} {
		t.Run(tc.name, func(t *testing.T) {
			addr := serveTCP(t, func(c net.Conn) {
				_, _ = c.Write([]byte("bye"))
				closeWrite(c)
				_, _ = io.Copy(io.Discard, c)
			})
			app, done := throughGatewaysTo(t, context.Background(), tunnelTo(addr))
			_ = app.SetDeadline(time.Now().Add(20 * time.Second))
			if got, err := io.ReadAll(app); err != nil || string(got) != "bye" {
				t.Fatalf("answer %q, %v", got, err)
			}
			stop := time.After(time.Second)
		loop:
			for {
				select {
				case <-done:
					break loop
				case <-stop:
					break loop
				case <-time.After(50 * time.Millisecond):
					if tc.sends {
						_, _ = app.Write([]byte("x"))
					}
				}
			}
			select {
			case <-done:
				if tc.sends {
					t.Error("a tunnel whose application kept sending was ended as idle")
				}
			default:
				if !tc.sends {
					t.Error("a quiet half-closed tunnel still runs after three times its idle limit")
				}
			}
			_ = app.Close()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("the tunnel outlived its application's close")
			}
		})
	}
}
