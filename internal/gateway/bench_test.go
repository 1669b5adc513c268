package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/certs"
	"github.com/backbone-mesh/backbone/internal/identity"
	"github.com/backbone-mesh/backbone/internal/origin"
)

// benchPeer is a stand-in peer gateway: the same TLS 1.3 mTLS and HTTP/2
// settings as the inbound server, answering every CONNECT by echoing the
// stream. With the Pool on the other side, it measures the tunnel's hot
// path: stream setup, the application's bytes into the stream (the
// attempt body's read), the answer back (copyBuffered).
func benchPeer(b *testing.B) (*Pool, string) {
	pp := startPeer(b, http.HandlerFunc(echoTunnel), 5*time.Second, nil)
	return pp.pool, "web.demo.svc.cluster.local:80"
}

// echoTunnel answers a CONNECT and echoes the stream.
func echoTunnel(w http.ResponseWriter, r *http.Request) {
	fw := newFlushWriter(w)
	w.WriteHeader(http.StatusOK)
	_ = fw.f.FlushError()
	_, _ = copyBuffered(fw, r.Body)
}

// testPeer is a peer gateway served by a test handler, and a Pool dialing
// it (through a proxy when startPeer was given one).
type testPeer struct {
	pool     *Pool
	addr     string // the peer's listener
	accepted atomic.Int64
}

// startPeer serves handler with the inbound server's TLS and HTTP/2
// settings; via, if set, returns the address the pool dials instead of
// the listener's (a fault proxy in front of it).
func startPeer(tb testing.TB, handler http.Handler, dialTimeout time.Duration, via func(addr string) string) *testPeer {
	tb.Helper()
	east, west := testIdentities(tb)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	pp := &testPeer{addr: l.Addr().String()}
	srv := newTestServer(testInboundServer, east.ServerTLS("h2"), handler)
	go func() { _ = srv.Serve(countingListener{l, &pp.accepted}) }()
	tb.Cleanup(func() { _ = srv.Close() })
	target := pp.addr
	if via != nil {
		target = via(pp.addr)
	}
	host, port, _ := net.SplitHostPort(target)
	p, _ := strconv.Atoi(port)
	pp.pool = NewPool(west, dialTimeout, slog.New(slog.DiscardHandler), nil)
	tb.Cleanup(pp.pool.Close)
	pp.pool.Ensure(v1alpha1.Link{Spec: v1alpha1.LinkSpec{TargetClusterName: "east",
		GatewayAddresses: []v1alpha1.GatewayAddress{{Host: host, Port: int32(p)}},
		GatewayIdentity:  "spiffe://bench.test/cluster/east"}})
	return pp
}

// testIdentities issues east's and west's gateway identities from one
// anchor (trust domain bench.test).
func testIdentities(tb testing.TB) (east, west *identity.Files) {
	tb.Helper()
	anchor, err := certs.NewAnchor("bench.test", time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	load := func(cluster string) *identity.Files {
		dir := filepath.Join(tb.TempDir(), cluster)
		crt, key, err := anchor.Issue(cluster, time.Hour)
		if err != nil {
			tb.Fatal(err)
		}
		if err := certs.WriteIdentity(dir, crt, key, anchor.CertPEM()); err != nil {
			tb.Fatal(err)
		}
		id, err := identity.Load(dir)
		if err != nil {
			tb.Fatal(err)
		}
		return id
	}
	return load("east"), load("west")
}

// testInboundServer is the inbound server startPeer runs.
var testInboundServer = InboundServerBackbone

// newTestServer returns an inbound server of the given kind with the
// gateway's settings, serving handler.
func newTestServer(kind string, tlsConfig *tls.Config, handler http.Handler) server {
	srv, err := newServer(kind, tlsConfig, handler, slog.New(slog.DiscardHandler), 10*time.Second)
	if err != nil {
		panic(err)
	}
	return srv
}

// countingListener counts the connections it accepts.
type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// BenchmarkTunnelStream: one tunnel stream per operation over a pooled
// connection — open, 1 KiB up, 1 KiB echoed back, close. Allocations per
// op are per stream.
func BenchmarkTunnelStream(b *testing.B) { eachInboundServer(b, benchmarkTunnelStream) }

func benchmarkTunnelStream(b *testing.B) {
	pool, authority := benchPeer(b)
	msg := bytes.Repeat([]byte("x"), 1024)
	buf := make([]byte, len(msg))
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		app, gw := net.Pipe()
		st, err := pool.OpenStream(context.Background(), "east", authority, gw)
		if err != nil {
			b.Fatal(err)
		}
		exchange(b, app, st.Down, msg, buf)
		_ = app.Close()
		_ = gw.Close()
		_ = st.Close()
	}
}

// BenchmarkTunnelBulk: bytes through one long stream, 32 KiB per write;
// allocations per op are per 32 KiB (divide by 32 for per KiB).
func BenchmarkTunnelBulk(b *testing.B) { eachInboundServer(b, benchmarkTunnelBulk) }

func benchmarkTunnelBulk(b *testing.B) {
	pool, authority := benchPeer(b)
	app, gw := net.Pipe()
	st, err := pool.OpenStream(context.Background(), "east", authority, gw)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = st.Close() }()
	chunk := bytes.Repeat([]byte("y"), 32<<10)
	go func() { _, _ = io.Copy(io.Discard, st.Down) }()
	b.ReportAllocs()
	b.SetBytes(int64(len(chunk)))
	for b.Loop() {
		if _, err := app.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	_ = app.Close()
	_ = gw.Close()
}

// BenchmarkGatewayStream: one application connection per operation through
// both ends of the gateway's own code — serveOutbound on this side,
// inboundServer.tunnel on the peer's, to an echo backend — with 1 KiB up
// and 1 KiB back. Allocations per op are per stream, both gateways'.
func BenchmarkGatewayStream(b *testing.B) {
	discard := slog.New(slog.DiscardHandler)
	peerSide := &inboundServer{g: &Gateway{log: discard, metrics: newMetrics(nopRegisterer{}), drain: newDrainTracker()}}
	pp := startPeer(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		backend, echo := net.Pipe()
		go func() {
			_, _ = copyBuffered(echo, echo)
			_ = echo.Close()
		}()
		peerSide.tunnel(w, r, "west", backend)
	}), 5*time.Second, nil)
	g := &Gateway{log: discard, metrics: newMetrics(nopRegisterer{}), drain: newDrainTracker(), pool: pp.pool}
	r := route{cluster: "east", authority: "web.demo.svc.cluster.local:80"}
	msg := bytes.Repeat([]byte("x"), 1024)
	buf := make([]byte, len(msg))
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		app, gw := net.Pipe()
		done := make(chan struct{})
		go func() {
			g.serveOutbound(context.Background(), gw, r)
			close(done)
		}()
		exchange(b, app, app, msg, buf)
		_ = app.Close()
		<-done
	}
}

// BenchmarkTunnelRoundTrip: request and answer on one established stream,
// as a keep-alive client's requests go — 1 KiB up, the 1 KiB echo read
// back, per operation. ns/op is the round trip through both ends.
func BenchmarkTunnelRoundTrip(b *testing.B) { eachInboundServer(b, benchmarkTunnelRoundTrip) }

// eachInboundServer runs a benchmark against each inbound server.
func eachInboundServer(b *testing.B, bench func(*testing.B)) {
	for _, kind := range []string{InboundServerBackbone, InboundServerNetHTTP} {
		b.Run("inbound="+strings.ReplaceAll(kind, "/", ""), func(b *testing.B) {
			defer func(k string) { testInboundServer = k }(testInboundServer)
			testInboundServer = kind
			bench(b)
		})
	}
}

func benchmarkTunnelRoundTrip(b *testing.B) {
	pool, authority := benchPeer(b)
	msg := bytes.Repeat([]byte("x"), 1024)
	buf := make([]byte, len(msg))
	app, gw := net.Pipe()
	st, err := pool.OpenStream(context.Background(), "east", authority, gw)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = app.Close(); _ = gw.Close(); _ = st.Close() }()
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		exchange(b, app, st.Down, msg, buf)
	}
}

// BenchmarkGatewayRoundTrip: an application's keep-alive request and
// answer through both gateways' code over real sockets — the application's
// TCP connection into serveOutbound, the pooled tunnel, inboundServer.tunnel
// on the peer's side and a TCP echo backend — 1 KiB up and the 1 KiB echo
// back per operation, as the paths benchmark's requests go.
func BenchmarkGatewayRoundTrip(b *testing.B) { eachInboundServer(b, benchmarkGatewayRoundTrip) }

func benchmarkGatewayRoundTrip(b *testing.B) {
	app, done := throughGateways(b, func(c net.Conn) { _, _ = copyBuffered(c, c) })
	msg := bytes.Repeat([]byte("x"), 1024)
	buf := make([]byte, len(msg))
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		exchange(b, app, app, msg, buf)
	}
	_ = app.Close()
	<-done
}

// throughGateways connects an application over real sockets through both
// gateways' code — serveOutbound on this side, the pooled tunnel,
// inboundServer.tunnel on the peer's — to a TCP backend that serve
// serves. done is closed when serveOutbound returned.
func throughGateways(b testing.TB, serve func(net.Conn)) (app net.Conn, done <-chan struct{}) {
	backendAddr := serveTCP(b, serve)
	return throughGatewaysTo(b, context.Background(), func(peerSide *inboundServer, w http.ResponseWriter, r *http.Request) {
		backend, err := net.Dial("tcp", backendAddr)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		peerSide.tunnel(w, r, "west", backend)
	})
}

// throughGatewaysTo is throughGateways with the peer gateway's handler
// given, and ctx the outbound side's (the gateway's streams' context).
func throughGatewaysTo(b testing.TB, ctx context.Context, handler func(peerSide *inboundServer, w http.ResponseWriter, r *http.Request)) (app net.Conn, done <-chan struct{}) {
	discard := slog.New(slog.DiscardHandler)
	peerSide := &inboundServer{g: &Gateway{log: discard, metrics: newMetrics(nopRegisterer{}), drain: newDrainTracker(), origin: origin.New(discard)}}
	pp := startPeer(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { handler(peerSide, w, r) }), 5*time.Second, nil)
	g := &Gateway{log: discard, metrics: newMetrics(nopRegisterer{}), drain: newDrainTracker(), pool: pp.pool}
	r := route{cluster: "east", authority: "web.demo.svc.cluster.local:80"}
	front, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = front.Close() })
	served := make(chan struct{})
	go func() {
		defer close(served)
		c, err := front.Accept()
		if err != nil {
			return
		}
		g.serveOutbound(ctx, c, r)
	}()
	app, err = net.Dial("tcp", front.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = app.Close() })
	return app, served
}

// exchange writes msg to w and reads len(buf) bytes back from r.
func exchange(tb testing.TB, w io.Writer, r io.Reader, msg, buf []byte) {
	if _, err := w.Write(msg); err != nil {
		tb.Fatal(err)
	}
	if _, err := io.ReadFull(r, buf); err != nil {
		tb.Fatal(err)
	}
}

// serveTCP serves each connection to a loopback listener with serve,
// closing it afterwards, until the test ends; it returns the address.
func serveTCP(tb testing.TB, serve func(net.Conn)) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { serve(c); _ = c.Close() }()
		}
	}()
	return l.Addr().String()
}

// BenchmarkGatewayBulk: one long upload over real sockets through both
// gateways' code — the application's TCP connection, serveOutbound, the
// pooled tunnel, inboundServer.tunnel, a TCP sink — 32 KiB per operation.
func BenchmarkGatewayBulk(b *testing.B) { eachInboundServer(b, benchmarkGatewayBulk) }

func benchmarkGatewayBulk(b *testing.B) {
	app, done := throughGateways(b, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	chunk := bytes.Repeat([]byte("y"), 32<<10)
	b.ReportAllocs()
	b.SetBytes(int64(len(chunk)))
	for b.Loop() {
		if _, err := app.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	_ = app.Close()
	<-done
}
