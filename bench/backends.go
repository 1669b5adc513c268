package main

import (
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// httpBackend answers every request with a 1 KiB body.
func httpBackend(l net.Listener) *http.Server {
	body := []byte(strings.Repeat("x", 1024))
	srv := &http.Server{
		ReadHeaderTimeout: 10 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/octet-stream")
			_, _ = w.Write(body)
		}),
	}
	go func() { _ = srv.Serve(l) }()
	return srv
}

// sinkBackend reads each connection to EOF and answers with the byte
// count, so bulk transfers are confirmed end to end.
func sinkBackend(l net.Listener) {
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer func() { _ = c.Close() }()
				n, _ := io.Copy(io.Discard, c)
				var b [8]byte
				binary.BigEndian.PutUint64(b[:], uint64(n))
				_, _ = c.Write(b[:])
			}()
		}
	}()
}
