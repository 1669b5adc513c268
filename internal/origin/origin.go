package origin

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/backbone-mesh/backbone/internal/tcpstate"
)

// Protocol is how the gateway talks to a target.
type Protocol string

// The protocols of an EgressTarget.
const (
	HTTPS Protocol = "https"
	TLS   Protocol = "tls"
	TCP   Protocol = "tcp"
)

// Target is one egress target as the gateway sees it.
type Target struct {
	// Name identifies the target in logs and metrics (the EgressTarget).
	Name     string
	DNSName  string
	Port     int32
	Protocol Protocol
	// CABundle (PEM) replaces the system roots when set.
	CABundle []byte
	// ProbePath is requested by Probe.
	ProbePath string
	// Squad owns the target; it is written in the access log.
	Squad string
}

func (t Target) address() string {
	return net.JoinHostPort(t.DNSName, strconv.Itoa(int(t.Port)))
}

func (t Target) tlsConfig() (*tls.Config, error) {
	cfg := &tls.Config{ServerName: t.DNSName, MinVersion: tls.VersionTLS12}
	if len(t.CABundle) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(t.CABundle) {
			return nil, fmt.Errorf("egress target %s: caBundle holds no PEM certificate", t.Name)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

// Originator serves connections destined to egress targets.
type Originator struct {
	Dialer *Dialer
	Log    *slog.Logger

	mu         sync.Mutex
	transports map[string]*http.Transport // by target identity, reused
}

// New returns an Originator with a safe dialer.
func New(log *slog.Logger) *Originator {
	if log == nil {
		log = slog.Default()
	}
	return &Originator{Dialer: &Dialer{}, Log: log, transports: map[string]*http.Transport{}}
}

func (o *Originator) transport(t Target) (*http.Transport, error) {
	key := fmt.Sprintf("%s|%s|%d|%x", t.Name, t.DNSName, t.Port, t.CABundle)
	o.mu.Lock()
	defer o.mu.Unlock()
	if tr, ok := o.transports[key]; ok {
		return tr, nil
	}
	cfg, err := t.tlsConfig()
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{
		DialContext:            o.Dialer.DialContext,
		TLSClientConfig:        cfg,
		ForceAttemptHTTP2:      true,
		MaxIdleConnsPerHost:    64,
		IdleConnTimeout:        90 * time.Second,
		TLSHandshakeTimeout:    10 * time.Second,
		ResponseHeaderTimeout:  60 * time.Second,
		MaxResponseHeaderBytes: 1 << 20,
	}
	o.transports[key] = tr
	return tr, nil
}

// Serve handles one client connection (a tunnel stream, or a local
// application's connection) for target t, until either side closes. caller
// names who is calling (a peer cluster's identity, or a local address) in
// the access log: one line per request (https) or per connection (tls,
// tcp).
func (o *Originator) Serve(ctx context.Context, client net.Conn, t Target, caller string) error {
	switch t.Protocol {
	case HTTPS, "":
		return o.serveHTTPS(ctx, client, t, caller)
	case TLS, TCP:
		start := time.Now()
		upstream, err := o.dial(ctx, t)
		if err != nil {
			_ = client.Close()
			o.access(caller, t, "CONNECT", "", 0, 0, 0, start, err)
			return err
		}
		// The tunnel's end (a reset stream, a closed connection) ends
		// the upstream connection: half-closed, an upstream that never
		// answers or closes would hold both, and the stream's slot.
		stop := context.AfterFunc(ctx, func() { reset(client); reset(upstream) })
		in, out, err := splice(client, upstream)
		stop()
		if err != nil && ctx.Err() == nil {
			err = fmt.Errorf("egress target %s: tunnel failed: %w", t.Name, err)
		} else {
			err = nil // the tunnel's end closed both
		}
		o.access(caller, t, "CONNECT", "", 0, in, out, start, err)
		return err
	default:
		_ = client.Close()
		return fmt.Errorf("egress target %s: unknown protocol %q", t.Name, t.Protocol)
	}
}

func (o *Originator) dial(ctx context.Context, t Target) (net.Conn, error) {
	conn, err := o.Dialer.DialContext(ctx, "tcp", t.address())
	if err != nil {
		return nil, fmt.Errorf("egress target %s: dialing %s: %w", t.Name, t.address(), err)
	}
	if t.Protocol == TCP {
		return conn, nil
	}
	cfg, err := t.tlsConfig()
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	tc := tls.Client(conn, cfg)
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("egress target %s: TLS handshake with %s: %w", t.Name, t.address(), err)
	}
	return tc, nil
}

// serveHTTPS reads plain HTTP/1.1 requests from the client and forwards
// each to https://<dnsName>:<port> with Host set to the target's name.
func (o *Originator) serveHTTPS(ctx context.Context, client net.Conn, t Target, caller string) error {
	tr, err := o.transport(t)
	if err != nil {
		_ = client.Close()
		return err
	}
	// A protocol switch (websocket) is copied by net/http's proxy, which
	// closes both connections at either side's end: a target that reset
	// would reach the caller as a clean end. The switched connection's
	// body records a failure, and the caller's connection is reset.
	sw := &switched{}
	client = &switchedClient{Conn: client, sw: sw}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.Out.URL.Scheme = "https"
			r.Out.URL.Host = t.address()
			r.Out.Host = t.DNSName
			if t.Port != 443 {
				r.Out.Host = t.address()
			}
			r.Out.Header.Del("Forwarded")
			// net/http's proxy passes any protocol switch the caller asks
			// for; only websocket (App Service and SignalR use it) goes on.
			// Switching to h2c or anything else would turn the rest of the
			// connection into requests the access log never sees.
			if up := r.Out.Header.Get("Upgrade"); up != "" && !strings.EqualFold(up, "websocket") {
				r.Out.Header.Del("Upgrade")
				r.Out.Header.Del("Connection")
			}
		},
		Transport: switchWatch{tr},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			o.Log.Warn("egress request failed", "target", t.Name, "err", err)
			status := http.StatusBadGateway
			if errors.Is(err, ErrForbiddenAddress) {
				status = http.StatusForbidden
			}
			if errors.As(err, new(callerBodyError)) {
				status = http.StatusBadRequest
			}
			http.Error(w, fmt.Sprintf("backbone egress %s: %v", t.Name, err), status)
		},
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			// An answer may come before the request's body is all read: a
			// target that refuses an upload (401, 413) answers at once,
			// and a caller may wait for that answer before it sends more
			// (Expect: 100-continue). net/http's server would read the
			// rest of the body before writing the answer, or wait on the
			// read in flight: full duplex writes it at once, and the
			// recorder then ends the connection with the answer, since
			// the rest of the body can no longer be told from a next
			// request. The counting body goes on a copy of the request,
			// so the server's own body stays its own.
			_ = http.NewResponseController(w).EnableFullDuplex()
			req := r.WithContext(context.WithValue(r.Context(), switchedKey{}, sw))
			body := &countingReader{r: r.Body}
			body.done.Store(r.ContentLength == 0) // none to read
			req.Body = body
			// RFC 9112 6.1: a chunked request may have carried a
			// Content-Length too (net/http drops it unseen); whatever that
			// length covered beyond the chunked body must never be read as
			// another request, so the connection ends with the answer.
			if len(r.TransferEncoding) > 0 {
				w.Header().Set("Connection", "close")
			}
			rw := &recorder{ResponseWriter: w, status: http.StatusOK, body: body}
			proxy.ServeHTTP(rw, req)
			status, in, out := rw.status, body.n.Load(), rw.n
			var err error
			if sw.body != nil { // the connection switched: its bytes are the body's
				status, in, out = http.StatusSwitchingProtocols, in+sw.body.in.Load(), out+sw.body.out.Load()
				if sw.failed.Load() {
					err = fmt.Errorf("egress target %s: switched connection failed", t.Name)
				}
			}
			o.access(caller, t, r.Method, r.URL.Path, status, in, out, start, err)
		}),
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       5 * time.Minute,
		MaxHeaderBytes:    1 << 20,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ErrorLog:          slog.NewLogLogger(o.Log.Handler(), slog.LevelDebug),
	}
	l := newOneConnListener(client)
	err = srv.Serve(l)
	<-l.closed // the connection's handler finished
	if errors.Is(err, errListenerDone) {
		return nil
	}
	return err
}

// switched is one caller connection's protocol switch, if it made one.
type switched struct {
	body   *switchedBody // set by the transport before the proxy copies
	failed atomic.Bool   // the target's side failed
}

type switchedKey struct{}

// switchWatch hands a switched connection's body to the caller
// connection's switched, which the request's context carries.
type switchWatch struct{ rt http.RoundTripper }

func (w switchWatch) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := w.rt.RoundTrip(r)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		return resp, err
	}
	sw, _ := r.Context().Value(switchedKey{}).(*switched)
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if sw == nil || !ok {
		return resp, err
	}
	sw.body = &switchedBody{ReadWriteCloser: rwc, failed: &sw.failed}
	resp.Body = sw.body
	return resp, nil
}

// switchedBody is the target's side of a switched connection: it counts
// the bytes and records a failure (a reset, a read or write error; not
// a clean end, and not what follows the proxy's own Close).
type switchedBody struct {
	io.ReadWriteCloser
	in, out atomic.Int64
	closed  atomic.Bool
	failed  *atomic.Bool
}

func (b *switchedBody) Read(p []byte) (int, error) {
	n, err := b.ReadWriteCloser.Read(p)
	b.out.Add(int64(n))
	if err != nil && err != io.EOF && !b.closed.Load() {
		b.failed.Store(true)
	}
	return n, err
}

func (b *switchedBody) Write(p []byte) (int, error) {
	n, err := b.ReadWriteCloser.Write(p)
	b.in.Add(int64(n))
	if err != nil && !b.closed.Load() {
		b.failed.Store(true)
	}
	return n, err
}

func (b *switchedBody) Close() error {
	b.closed.Store(true)
	return b.ReadWriteCloser.Close()
}

// switchedClient is the caller's connection, which the proxy closes at
// a switched connection's end: reset when the target's side failed.
type switchedClient struct {
	net.Conn
	sw *switched
}

func (c *switchedClient) Close() error {
	if c.sw.failed.Load() {
		reset(c.Conn)
		return nil
	}
	return c.Conn.Close()
}

// Probe measures a TLS handshake plus a HEAD of the probe path (a TCP
// connect for tcp targets, and a handshake for tls ones): the egress
// probe. Every probe dials anew, so the handshake is measured and a dead
// target is not hidden by a pooled connection; it goes through the same
// dialer as traffic (the forbidden-address checks) and never follows a
// redirect: any answer below 500 means the target is there.
func (o *Originator) Probe(ctx context.Context, t Target) (time.Duration, error) {
	start := time.Now()
	if t.Protocol == TCP || t.Protocol == TLS {
		c, err := o.dial(ctx, t)
		if err != nil {
			return 0, err
		}
		_ = c.Close()
		return time.Since(start), nil
	}
	cfg, err := t.tlsConfig()
	if err != nil {
		return 0, err
	}
	tr := &http.Transport{
		DialContext:            o.Dialer.DialContext,
		TLSClientConfig:        cfg,
		DisableKeepAlives:      true,
		MaxResponseHeaderBytes: 64 << 10,
	}
	defer tr.CloseIdleConnections()
	path := t.ProbePath
	if path == "" {
		path = "/"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, "https://"+t.address()+path, nil)
	if err != nil {
		return 0, err
	}
	req.Host = t.DNSName
	if t.Port != 443 {
		req.Host = t.address()
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return 0, fmt.Errorf("egress target %s: probe %s: %w", t.Name, path, err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode >= 500 {
		return time.Since(start), fmt.Errorf("egress target %s: probe %s answered %s", t.Name, path, resp.Status)
	}
	return time.Since(start), nil
}

// access writes one line of the egress audit trail.
func (o *Originator) access(caller string, t Target, method, path string, status int, in, out int64, start time.Time, err error) {
	attrs := []any{
		"caller", caller, "squad", t.Squad, "target", t.Name, "dns_name", t.DNSName, "protocol", string(t.Protocol),
		"method", method, "path", path, "status", status, "bytes_in", in, "bytes_out", out,
		"duration_ms", float64(time.Since(start).Microseconds()) / 1000,
	}
	if err != nil {
		attrs = append(attrs, "err", err.Error())
	}
	o.Log.Info("egress access", attrs...)
}

// countingReader is the caller's request body as the proxy reads it.
type countingReader struct {
	r    io.ReadCloser
	n    atomic.Int64
	done atomic.Bool // read to its end
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	if err == io.EOF {
		c.done.Store(true)
	}
	if err != nil && err != io.EOF {
		err = callerBodyError{err}
	}
	return n, err
}

// Close leaves the body to the server, which closes it once the answer
// is out: the proxy closes it as it returns, and a close would wait for
// a read in flight, for the caller's next bytes, holding back the
// answer still buffered.
func (c *countingReader) Close() error { return nil }

// callerBodyError is a failure to read the caller's request body (a
// malformed chunk, a caller gone): the caller's fault, not the target's.
type callerBodyError struct{ error }

func (e callerBodyError) Unwrap() error { return e.error }

type recorder struct {
	http.ResponseWriter
	body   *countingReader
	status int
	n      int64
	wrote  bool
}

func (r *recorder) WriteHeader(code int) {
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		// An interim answer (100 Continue, 103) passed on: the final
		// one, and what it says of the connection, is still to come.
		r.ResponseWriter.WriteHeader(code)
		return
	}
	if !r.wrote {
		r.status, r.wrote = code, true
		r.endEarly(code)
	}
	r.ResponseWriter.WriteHeader(code)
}

// endEarly ends the connection with an answer that came before the
// request's body was all read (see serveHTTPS).
func (r *recorder) endEarly(code int) {
	if code >= 200 && code != http.StatusSwitchingProtocols && r.body != nil && !r.body.done.Load() {
		r.Header().Set("Connection", "close")
	}
}

func (r *recorder) Write(p []byte) (int, error) {
	if !r.wrote {
		r.endEarly(http.StatusOK)
	}
	r.wrote = true
	n, err := r.ResponseWriter.Write(p)
	r.n += int64(n)
	return n, err
}

func (r *recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// splice copies both ways, passing on each side's clean end as a
// half-close, until both are done. A side that fails (a reset, a read or
// write error) fails the other: the connections are reset, not closed,
// and the error is returned, so that whoever serves a as a stream resets
// the stream. A clean end after a cut-off answer would pass it for a
// complete one.
func splice(a, b net.Conn) (ab, ba int64, err error) {
	// ended: the side's writing was ended here (CloseWrite, or Close for
	// a side without it, a tunnel stream). closed: by Close, which makes
	// the other copy's read from it fail: that failure is this end, not
	// the side's.
	type side struct {
		net.Conn
		ended, closed atomic.Bool
	}
	sa, sb := &side{Conn: a}, &side{Conn: b}
	var failed sync.Once
	var wg sync.WaitGroup
	cp := func(dst, src *side, n *int64) {
		defer wg.Done()
		var cerr error
		*n, cerr = io.Copy(dst.Conn, src.Conn)
		if cerr == nil && !src.ended.Load() && tcpstate.WasReset(src.Conn) {
			cerr = tcpstate.ErrReset // a write to src took the reset's error
		}
		switch {
		case cerr != nil && src.closed.Load():
			// src was closed here at the other side's end, having no
			// half-close: what it still sent is cut off, which dst is
			// told by a reset, not a clean end.
			reset(dst.Conn)
		case cerr != nil:
			failed.Do(func() {
				err = cerr
				reset(a)
				reset(b)
			})
		default:
			dst.ended.Store(true)
			if cw, ok := dst.Conn.(interface{ CloseWrite() error }); !ok || cw.CloseWrite() != nil {
				dst.closed.Store(true)
				_ = dst.Close()
			}
		}
	}
	wg.Add(2)
	go cp(sa, sb, &ba)
	go cp(sb, sa, &ab)
	wg.Wait()
	_ = a.Close()
	_ = b.Close()
	return ab, ba, err
}

// reset ends c as failed: a tunnel stream is reset (Abort), a TCP
// connection too (under TLS as well); anything else is closed.
func reset(c net.Conn) {
	if a, ok := c.(interface{ Abort() }); ok {
		a.Abort()
		return
	}
	tcpstate.Abort(c)
}
