package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"

	"github.com/backbone-mesh/backbone/internal/identity"
	"github.com/backbone-mesh/backbone/internal/origin"
	"github.com/backbone-mesh/backbone/internal/tcpstate"
)

// Flow-control windows for long fat links: a 30 ms × 1 Gbit/s path holds
// ~3.75 MB in flight, so one stream gets 8 MiB and a connection 256 MiB.
const (
	streamWindow     = 8 << 20
	connectionWindow = 256 << 20
	// maxStreamsPerConn bounds what one peer connection may open; the
	// client side opens more connections when it needs more streams.
	maxStreamsPerConn = 1000
)

// h2Config is the HTTP/2 configuration of both ends of a tunnel
// connection (in net/http's terms: its inbound server can be Go's).
func h2Config() *http.HTTP2Config {
	return &http.HTTP2Config{
		MaxConcurrentStreams:          maxStreamsPerConn,
		StrictMaxConcurrentRequests:   true,
		MaxReceiveBufferPerStream:     streamWindow,
		MaxReceiveBufferPerConnection: connectionWindow,
		// Larger frames buy nothing (tunnel copies move 32 KiB at a time)
		// and cost memory: net/http's HTTP/2 client sizes each request
		// body's write buffer by the peer's frame size (up to 512 KiB),
		// held for the stream's whole life.
		MaxReadFrameSize: 64 << 10,
		SendPingTimeout:  30 * time.Second,
		PingTimeout:      15 * time.Second,
	}
}

// inboundServer is the mTLS endpoint peer gateways tunnel into.
type inboundServer struct {
	g   *Gateway
	srv server
}

// server is what serves the inbound port: backbone's own HTTP/2 server
// (h2Server), or net/http's, kept to compare against
// (--inbound-server=net/http).
type server interface {
	Serve(net.Listener) error
	Shutdown(context.Context) error
	Close() error
}

// Inbound server implementations (Options.InboundServer).
const (
	InboundServerBackbone = "backbone"
	InboundServerNetHTTP  = "net/http"
)

func newInboundServer(g *Gateway) (*inboundServer, error) {
	s := &inboundServer{g: g}
	srv, err := newServer(g.opts.InboundServer, g.identity.ServerTLS("h2"), http.HandlerFunc(s.serve),
		g.log.With("component", "inbound"), g.opts.HeaderTimeout)
	if err != nil {
		return nil, err
	}
	s.srv = srv
	return s, nil
}

// newServer returns an inbound server of the given kind with the
// gateway's HTTP/2 settings.
func newServer(kind string, tlsConfig *tls.Config, handler http.Handler, log *slog.Logger, headerTimeout time.Duration) (server, error) {
	const idleTimeout, maxHeaderBytes = 5 * time.Minute, 64 << 10
	cfg := h2Config()
	switch kind {
	case "", InboundServerBackbone:
		return &h2Server{
			handler:          handler,
			tlsConfig:        tlsConfig,
			log:              log,
			handshakeTimeout: headerTimeout,
			idleTimeout:      idleTimeout,
			pingInterval:     cfg.SendPingTimeout,
			pingTimeout:      cfg.PingTimeout,
			writeTimeout:     cfg.SendPingTimeout,
			maxStreams:       maxStreamsPerConn,
			streamWindow:     streamWindow,
			connWindow:       connectionWindow,
			maxFrameSize:     uint32(cfg.MaxReadFrameSize),
			maxHeaderBytes:   maxHeaderBytes,
		}, nil
	case InboundServerNetHTTP:
		// Only HTTP/2: a peer that does not negotiate h2 is not a gateway.
		var protocols http.Protocols
		protocols.SetHTTP2(true)
		return tlsServer{&http.Server{
			Handler:           handler,
			TLSConfig:         tlsConfig,
			Protocols:         &protocols,
			HTTP2:             cfg,
			ReadHeaderTimeout: headerTimeout,
			IdleTimeout:       idleTimeout,
			MaxHeaderBytes:    maxHeaderBytes,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		}}, nil
	}
	return nil, fmt.Errorf("inbound server %q: want %q or %q", kind, InboundServerBackbone, InboundServerNetHTTP)
}

// tlsServer serves TLS with an http.Server.
type tlsServer struct{ *http.Server }

func (t tlsServer) Serve(l net.Listener) error { return t.ServeTLS(l, "", "") }

func (s *inboundServer) serveListener(l net.Listener) error {
	// Handshakes are bounded: a client that opens a connection and stalls
	// is cut off by the header timeout.
	err := s.srv.Serve(l)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

func (s *inboundServer) deny(w http.ResponseWriter, caller, reason, msg string, status int) {
	// caller is a verified identity's cluster (one the trust bundle
	// vouches for) or empty: a bounded label.
	s.g.metrics.denied.WithLabelValues(caller, reason).Inc()
	s.g.log.Warn("tunnel refused", "caller", caller, "reason", reason, "detail", msg)
	http.Error(w, msg, status)
}

func (s *inboundServer) serve(w http.ResponseWriter, r *http.Request) {
	if r.TLS == nil || r.ProtoMajor != 2 {
		s.deny(w, "", deniedProtocol, "HTTP/2 over mTLS only", http.StatusForbidden)
		return
	}
	peer, err := identity.PeerID(*r.TLS)
	if err != nil { // verified in the handshake already; belt and braces
		s.deny(w, "", deniedProtocol, "no peer identity", http.StatusForbidden)
		return
	}
	caller := peer.Cluster
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/ready":
		w.Header().Set("Content-Type", "text/plain")
		_, _ = fmt.Fprintln(w, s.g.opts.ClusterName)
		return
	case r.Method != http.MethodConnect:
		s.deny(w, caller, deniedMethod, "CONNECT only", http.StatusMethodNotAllowed)
		return
	}
	a, err := ParseAuthority(r.Host)
	if err != nil {
		s.deny(w, caller, deniedAuthority, "bad authority", http.StatusForbidden)
		return
	}
	ctx := r.Context()
	svc, err := s.g.view.authorize(ctx, a, caller)
	switch {
	case errors.Is(err, errNotFound):
		s.deny(w, caller, deniedNotFound, a.String()+": not found", http.StatusForbidden)
		return
	case errors.Is(err, errNotExported):
		s.deny(w, caller, deniedNotExported, a.String()+": not exported", http.StatusForbidden)
		return
	case errors.Is(err, errNotAllowed):
		s.deny(w, caller, deniedNotAllowed, a.String()+": "+caller+" may not reach it", http.StatusForbidden)
		return
	case err != nil:
		http.Error(w, "lookup failed", http.StatusServiceUnavailable)
		return
	}
	if target, ok, err := s.g.egressTarget(ctx, svc); ok || err != nil {
		if err == nil {
			// The originator dials the target's own port: the authority's
			// must still be the Service's, as for any other Service.
			_, err = tcpPort(svc, a.Port)
		}
		if err != nil {
			s.deny(w, caller, deniedNotFound, err.Error(), http.StatusForbidden)
			return
		}
		s.originate(w, r, caller, target)
		return
	}
	backendAddr, err := s.g.view.backend(ctx, svc, a)
	if err != nil {
		s.g.metrics.dialErrors.WithLabelValues(caller, "backend").Inc()
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	dctx, cancel := context.WithTimeout(ctx, s.g.opts.DialTimeout)
	backend, err := (&net.Dialer{}).DialContext(dctx, "tcp", backendAddr)
	cancel()
	if err != nil {
		s.g.metrics.dialErrors.WithLabelValues(caller, "backend").Inc()
		s.g.log.Warn("dialing backend", "caller", caller, "target", a.String(), "backend", backendAddr, "err", err)
		http.Error(w, "backend unreachable", http.StatusBadGateway)
		return
	}
	s.tunnel(w, r, caller, backend)
}

// uploadTo copies a stream's request bytes to the backend; backbone's own
// server's bodies write them to the socket from the frame reader when
// they can (h2Body.WriteTo).
func uploadTo(backend net.Conn, body io.Reader) (int64, error) {
	if b, ok := body.(*h2Body); ok {
		return b.WriteTo(backend)
	}
	return copyBuffered(backend, body)
}

// tunnel joins the stream and the backend connection, each direction
// ending on its own as TCP's do: the caller's end of its request (END_STREAM)
// half-closes the backend; the backend's end ends the answer, and the
// request goes on until the caller ends it too. A failure on either side
// resets the other: the stream, or the backend connection.
func (s *inboundServer) tunnel(w http.ResponseWriter, r *http.Request, caller string, backend net.Conn) {
	m := s.g.metrics.streamSeries(inbound, caller)
	start := time.Now()
	m.active.Inc()
	defer m.active.Dec()
	defer func() { m.duration.Observe(time.Since(start).Seconds()) }()
	s.g.drain.add()
	defer s.g.drain.done()
	uploading := true
	defer func() {
		if uploading {
			tcpstate.Abort(backend) // its request was cut off: not a clean end
		} else {
			_ = backend.Close()
		}
	}()
	// A reset stream or a closed connection ends the backend connection
	// too, as a failure: the copies below wait on the backend, which may
	// never answer or close, and the stream would hold its slot meanwhile.
	stop := context.AfterFunc(r.Context(), func() { tcpstate.Abort(backend) })
	defer stop()

	fw := newFlushWriter(w)
	w.WriteHeader(http.StatusOK)
	if err := fw.f.FlushError(); err != nil {
		m.ended("error")
		return
	}
	up := make(chan error, 1)
	var shutWrite atomic.Bool // the backend's connection was half-closed here
	go func() {
		n, err := uploadTo(backend, r.Body)
		m.received.Add(float64(n))
		switch {
		case isClosed(err):
			shutWrite.Store(true)
			closeWrite(backend)
		case backendWriteFailed(err):
			// The backend's side failed (reset, or shut for reading):
			// what it sent until then is read below, and its reset ends
			// that read as a failure.
		default:
			tcpstate.Abort(backend) // the caller's side failed: no clean end for the backend either
		}
		up <- err
	}()
	n, downErr := copyFrom(fw, backend)
	m.sent.Add(float64(n))
	if isEOF(downErr) && !shutWrite.Load() && tcpstate.WasReset(backend) {
		downErr = tcpstate.ErrReset // the upload's write took the reset's error
	}
	if !isEOF(downErr) {
		// The backend's connection failed (or the stream did): the
		// stream is reset, so the caller's application sees the failure
		// and not a clean end after a cut-off answer.
		m.ended("error")
		panic(http.ErrAbortHandler)
	}
	// The backend ended its answer. Where the server can end the answer
	// alone (backbone's own), the caller's request goes on until the
	// caller ends it, as after a TCP half-close; with net/http's, returning
	// ends the stream and resets what the caller still sends.
	var upErr error
	select {
	case upErr = <-up:
		uploading = false
	default:
		if cw, ok := w.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
			select {
			case upErr = <-up:
				uploading = false
			case <-r.Context().Done():
			}
		}
	}
	result := "ok"
	if r.Context().Err() != nil || (!uploading && !isClosed(upErr) && !backendWriteFailed(upErr)) {
		result = "error" // the caller's side failed
	}
	m.ended(result)
}

// backendWriteFailed says whether an upload ended because writing to the
// backend failed, rather than reading the caller's stream.
func backendWriteFailed(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && (op.Op == "write" || op.Op == "readfrom")
}

// originate serves a tunnel to an egress target through the originator.
func (s *inboundServer) originate(w http.ResponseWriter, r *http.Request, caller string, t origin.Target) {
	fw := newFlushWriter(w)
	w.WriteHeader(http.StatusOK)
	if err := fw.f.FlushError(); err != nil {
		return
	}
	s.g.drain.add()
	defer s.g.drain.done()
	s.g.metrics.activeStreams.WithLabelValues(inbound, caller).Inc()
	defer s.g.metrics.activeStreams.WithLabelValues(inbound, caller).Dec()
	conn := newStreamConn(r.Body, fw)
	// reset and closeWrite may be called from another goroutine (a
	// context's AfterFunc) as the handler returns: once it has, the
	// response writer is not to be touched (net/http's is gone).
	var mu sync.Mutex
	finished := false
	defer func() { mu.Lock(); finished = true; mu.Unlock() }()
	guard := func(f func()) func() {
		return func() {
			mu.Lock()
			defer mu.Unlock()
			if !finished {
				f()
			}
		}
	}
	if hw, ok := w.(*h2ResponseWriter); ok {
		conn.reset = guard(func() { hw.st.c.resetStream(hw.st.id, http2.ErrCodeCancel, true) })
		// The target's clean end ends the answer alone: the caller's
		// request goes on, as after a TCP half-close.
		conn.closeWrite = func() error {
			var err error
			guard(func() { err = hw.CloseWrite() })()
			return err
		}
	} else {
		rc := http.NewResponseController(w)
		conn.reset = guard(func() { _ = rc.SetWriteDeadline(time.Now()) })
	}
	if err := s.g.origin.Serve(r.Context(), conn, t, caller); err != nil {
		s.g.log.Warn("egress", "caller", caller, "target", t.Name, "err", err)
		s.g.metrics.streams.WithLabelValues(inbound, caller, "error").Inc()
		// The stream is reset: the caller's application sees the
		// target's failure, not a clean end after a cut-off answer.
		panic(http.ErrAbortHandler)
	}
	s.g.metrics.streams.WithLabelValues(inbound, caller, "ok").Inc()
}
