package e2e

import (
	"bufio"
	"context"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/targets"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

// seenRequest is what the egress target received.
type seenRequest struct {
	host   string
	path   string
	header http.Header
	body   string
}

// recordingTarget is an HTTPS target speaking HTTP/1.1 only (as an App
// Service does by default), so every header the gateway forwards is on the
// wire as it was sent. It records each request; /hop-response answers with
// hop-by-hop headers of its own, and a websocket upgrade is accepted and
// echoed upper-cased.
type recordingTarget struct {
	mu   sync.Mutex
	seen []seenRequest
}

func (rt *recordingTarget) requests() []seenRequest {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return append([]seenRequest(nil), rt.seen...)
}

func (rt *recordingTarget) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rt.mu.Lock()
	rt.seen = append(rt.seen, seenRequest{host: r.Host, path: r.URL.Path, header: r.Header.Clone(), body: string(body)})
	rt.mu.Unlock()
	switch {
	case strings.EqualFold(r.Header.Get("Upgrade"), "websocket"):
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer func() { _ = conn.Close() }()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		_ = brw.Flush()
		line, _ := brw.ReadString('\n')
		_, _ = brw.WriteString(strings.ToUpper(line))
		_ = brw.Flush()
	case r.URL.Path == "/hop-response":
		// Written by hand: net/http would manage Connection itself.
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer func() { _ = conn.Close() }()
		_, _ = brw.WriteString("HTTP/1.1 200 OK\r\nConnection: X-Target-Internal\r\nX-Target-Internal: secret\r\n" +
			"Keep-Alive: timeout=600\r\nProxy-Authenticate: Basic realm=\"target\"\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\nok")
		_ = brw.Flush()
	default:
		_, _ = io.WriteString(w, "ok")
	}
}

// TestEgressStripsHopByHopAndForwardingHeaders sends hand-written requests
// through a real gateway's egress path to an HTTPS target, from a local
// application and from another cluster through the tunnel, and checks on
// the target's side that hop-by-hop headers, headers named in Connection
// and caller-supplied forwarding headers never arrive, that no Connection
// header removes the Host the gateway sets, and that hop-by-hop headers
// of the target's answer do not reach the caller.
func TestEgressStripsHopByHopAndForwardingHeaders(t *testing.T) {
	testenv.RequireNetns(t)
	clusters := testenv.Start(t, "east", "west")
	east, west := clusters["east"], clusters["west"]
	ctx := context.Background()
	p := newPKI(t, trustDomain)

	rec := &recordingTarget{}
	srv := httptest.NewUnstartedServer(rec)
	srv.Listener = testenv.ListenNetns(t, 15)
	srv.StartTLS() // HTTP/1.1 only: EnableHTTP2 is off
	t.Cleanup(srv.Close)
	targetIP, targetPort, _ := net.SplitHostPort(srv.Listener.Addr().String())
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	const dnsName = "example.com" // a name in httptest's certificate
	wantHost := dnsName + ":" + targetPort

	eastGW := startGateway(t, east, 1, p.issue(t, "east"), "--egress-resolve", dnsName+"="+targetIP)
	westGW := startGateway(t, west, 2, p.issue(t, "west"))
	createLink(t, west, "east", eastGW.inbound)

	// What the EgressTarget reconciler would write in east: the target and
	// its exported Service on an egress port of the gateway.
	const egressPort = 20100
	port, _ := strconv.Atoi(targetPort)
	et := &v1alpha1.EgressTarget{
		ObjectMeta: metav1.ObjectMeta{Name: "credit", Namespace: v1alpha1.SystemNamespace},
		Spec: v1alpha1.EgressTargetSpec{HostName: "credit", DNSName: dnsName, Environment: "east", Squad: "maxus",
			Port: int32(port), Protocol: v1alpha1.EgressProtocol("https"), CABundle: string(caPEM)},
	}
	if err := east.Client.Create(ctx, et); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{
			Name: "credit", Namespace: v1alpha1.SystemNamespace,
			Labels:      map[string]string{v1alpha1.ExportedLabel: "true", targets.EgressTargetLabel: "credit"},
			Annotations: map[string]string{targets.EgressPortAnnotation: fmt.Sprint(egressPort)},
		},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "https", Port: 443}}},
	}
	if err := east.Client.Create(ctx, svc); err != nil {
		t.Fatal(err)
	}
	createMirror(t, west, "east", v1alpha1.SystemNamespace, "credit", []corev1.ServicePort{{Name: "https", Port: 443}},
		map[string]int32{"https": 20001}, westGW.ip)
	entries := map[string]string{
		"from a local application":                net.JoinHostPort(eastGW.ip, fmt.Sprint(egressPort)),
		"from another cluster through the tunnel": net.JoinHostPort(westGW.ip, "20001"),
	}
	for _, addr := range entries {
		waitListening(t, addr)
	}

	// Headers that must never reach the target, whatever the request.
	neverForwarded := []string{"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authorization", "Te", "Trailer",
		"Upgrade", "Http2-Settings", "X-Caller-Secret", "Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"}

	tests := map[string]struct {
		request string // the head, without the final CRLF
		body    string // sent as is after the head
		path    string // the path the target must see
		check   func(t *testing.T, seen seenRequest, resp *http.Response, conn *bufio.ReadWriter)
	}{
		"hop-by-hop headers, headers named in Connection and forwarding headers are removed": {
			request: "POST /score HTTP/1.1\r\nHost: credit-east\r\n" +
				"Connection: keep-alive, X-Caller-Secret, Host, X-Kept-Not\r\n" +
				"Keep-Alive: timeout=600\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\n" +
				"TE: gzip, deflate\r\nTrailer: X-Checksum\r\nUpgrade: h2c\r\nX-Caller-Secret: leaked\r\nX-Kept-Not: leaked\r\n" +
				"Forwarded: for=127.0.0.1;host=admin.internal\r\nX-Forwarded-For: 169.254.169.254\r\n" +
				"X-Forwarded-Host: admin.internal\r\nX-Forwarded-Proto: http\r\nX-Kept: yes\r\n" +
				"Transfer-Encoding: chunked\r\n",
			body: "5\r\nhello\r\n0\r\n\r\n",
			path: "/score",
			check: func(t *testing.T, seen seenRequest, resp *http.Response, _ *bufio.ReadWriter) {
				if seen.body != "hello" || seen.header.Get("X-Kept") != "yes" {
					t.Errorf("the target got body %q and X-Kept %q; want the caller's body and end-to-end header", seen.body, seen.header.Get("X-Kept"))
				}
				if seen.header.Get("X-Kept-Not") != "" {
					t.Errorf("a header named in Connection reached the target: %v", seen.header)
				}
			},
		},
		"an h2c upgrade is not passed on: the target gets a plain request": {
			request: "GET /upgrade HTTP/1.1\r\nHost: credit-east\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n" +
				"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
			path: "/upgrade",
		},
		"a TE of trailers alone is passed on, as gRPC needs": {
			request: "GET /trailers HTTP/1.1\r\nHost: credit-east\r\nTE: trailers, gzip\r\n",
			path:    "/trailers",
			check: func(t *testing.T, seen seenRequest, _ *http.Response, _ *bufio.ReadWriter) {
				if got := seen.header.Values("Te"); len(got) != 1 || got[0] != "trailers" {
					t.Errorf("the target saw TE %q, want exactly \"trailers\"", got)
				}
			},
		},
		"hop-by-hop headers of the target's answer do not reach the caller": {
			request: "GET /hop-response HTTP/1.1\r\nHost: credit-east\r\n",
			path:    "/hop-response",
			check: func(t *testing.T, _ seenRequest, resp *http.Response, _ *bufio.ReadWriter) {
				if resp.Header.Get("X-Kept") != "yes" {
					t.Errorf("the caller lost the target's end-to-end header: %v", resp.Header)
				}
				for _, h := range []string{"X-Target-Internal", "Keep-Alive", "Proxy-Authenticate"} {
					if v := resp.Header.Get(h); v != "" {
						t.Errorf("the caller got the target's %s: %q", h, v)
					}
				}
			},
		},
		"a websocket upgrade is passed on and then carries bytes both ways": {
			request: "GET /ws HTTP/1.1\r\nHost: credit-east\r\nConnection: Upgrade, X-Caller-Secret\r\nUpgrade: websocket\r\n" +
				"X-Caller-Secret: leaked\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
			path: "/ws",
			check: func(t *testing.T, seen seenRequest, resp *http.Response, conn *bufio.ReadWriter) {
				if resp.StatusCode != http.StatusSwitchingProtocols {
					t.Fatalf("caller got %s, want 101", resp.Status)
				}
				if seen.header.Get("X-Caller-Secret") != "" || !strings.EqualFold(seen.header.Get("Connection"), "Upgrade") {
					t.Errorf("the target saw Connection %q and X-Caller-Secret %q; want only Upgrade and nothing",
						seen.header.Get("Connection"), seen.header.Get("X-Caller-Secret"))
				}
				_, _ = conn.WriteString("ping\n")
				_ = conn.Flush()
				if line, err := conn.ReadString('\n'); err != nil || line != "PING\n" {
					t.Errorf("after the upgrade the target answered %q, %v", line, err)
				}
			},
		},
	}
	for entry, addr := range entries {
		for name, tc := range tests {
			t.Run(entry+"/"+name, func(t *testing.T) {
				before := len(rec.requests())
				c, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				defer func() { _ = c.Close() }()
				_ = c.SetDeadline(time.Now().Add(20 * time.Second))
				conn := bufio.NewReadWriter(bufio.NewReader(c), bufio.NewWriter(c))
				_, _ = conn.WriteString(tc.request + "\r\n" + tc.body)
				if err := conn.Flush(); err != nil {
					t.Fatal(err)
				}
				resp, err := http.ReadResponse(conn.Reader, nil)
				if err != nil {
					t.Fatal(err)
				}
				if resp.StatusCode != http.StatusSwitchingProtocols {
					_, _ = io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						t.Fatalf("caller got %s", resp.Status)
					}
				}
				got := rec.requests()[before:]
				if len(got) != 1 {
					t.Fatalf("the target saw %d requests, want 1", len(got))
				}
				seen := got[0]
				if seen.path != tc.path || seen.host != wantHost {
					t.Errorf("the target saw %s with Host %q, want %s with Host %q", seen.path, seen.host, tc.path, wantHost)
				}
				for _, h := range neverForwarded {
					if h == "Connection" && tc.path == "/ws" || h == "Upgrade" && tc.path == "/ws" || h == "Te" && tc.path == "/trailers" {
						continue // checked by the case itself
					}
					if v := seen.header.Values(h); len(v) > 0 {
						t.Errorf("the target got %s: %q", h, v)
					}
				}
				if tc.check != nil {
					tc.check(t, seen, resp, conn)
				}
			})
		}
	}

	t.Run("the access log names the verified caller, whatever the headers say", func(t *testing.T) {
		waitFor(t, 10*time.Second, "an egress access line for west", func() bool {
			return strings.Contains(string(eastGW.logBytes()), `"caller":"west","squad":"maxus"`)
		})
		for _, line := range strings.Split(string(eastGW.logBytes()), "\n") {
			if strings.Contains(line, `"msg":"egress access"`) && (strings.Contains(line, "169.254.169.254") || strings.Contains(line, "admin.internal")) {
				t.Errorf("a caller-supplied header reached the access log: %s", line)
			}
		}
	})
}
