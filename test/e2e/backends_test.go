package e2e

import (
	"crypto/sha256"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// httpBackend answers "hello from <name>".
func httpBackend(t *testing.T, l net.Listener, name string) {
	t.Helper()
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if d, err := time.ParseDuration(r.URL.Query().Get("sleep")); err == nil && d < time.Minute {
			time.Sleep(d) // a request that is in flight for a while
		}
		_, _ = io.WriteString(w, "hello from "+name+" via "+r.Proto)
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
}

// h2cBackend speaks HTTP/2 without TLS (prior knowledge), like a gRPC
// server behind a mesh.
func h2cBackend(t *testing.T, l net.Listener) {
	t.Helper()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Streams the request body back upper-cased: a bidirectional stream.
		rc := http.NewResponseController(w)
		w.WriteHeader(http.StatusOK)
		_ = rc.Flush()
		buf := make([]byte, 1024)
		for {
			n, err := r.Body.Read(buf)
			if n > 0 {
				_, _ = w.Write([]byte(strings.ToUpper(string(buf[:n]))))
				_ = rc.Flush()
			}
			if err != nil {
				return
			}
		}
	})
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: h, Protocols: &protocols}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
}

// upperEchoBackend reads until the client half-closes, then answers with
// what it read upper-cased and closes: it only answers if half-close
// crossed the tunnel.
func upperEchoBackend(l net.Listener) {
	serveEach(l, func(c net.Conn) {
		defer func() { _ = c.Close() }()
		b, _ := io.ReadAll(c)
		_, _ = c.Write([]byte(strings.ToUpper(string(b))))
	})
}

// sha256Backend reads to EOF and answers with the SHA-256 of what it read.
func sha256Backend(l net.Listener) {
	serveEach(l, func(c net.Conn) {
		defer func() { _ = c.Close() }()
		h := sha256.New()
		_, _ = io.Copy(h, c)
		_, _ = c.Write(h.Sum(nil))
	})
}

// serveEach serves every connection l accepts with serve, each in its
// own goroutine, until l is closed; serve ends the connection itself.
func serveEach(l net.Listener, serve func(net.Conn)) {
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go serve(c)
		}
	}()
}
