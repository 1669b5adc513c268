package origin

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backbone-mesh/backbone/internal/testenv"
)

func TestMain(m *testing.M) {
	// A fuzzing worker talks to its coordinator over pipes it inherits,
	// which a re-execution under unshare would not pass on; it is started
	// inside the coordinator's namespace already, and fuzz targets dial
	// nothing.
	for _, arg := range os.Args[1:] {
		if strings.HasPrefix(arg, "-test.fuzzworker") {
			os.Exit(m.Run())
		}
	}
	testenv.RunInNetns(m)
}

func TestForbidden(t *testing.T) {
	tests := map[string]struct {
		addr      string
		forbidden bool
	}{
		"loopback is refused":                            {"127.0.0.1", true},
		"IPv6 loopback is refused":                       {"::1", true},
		"an IPv4-mapped loopback is refused":             {"::ffff:127.0.0.1", true},
		"the link-local metadata address is refused":     {"169.254.169.254", true},
		"AWS's IPv6 metadata address is refused":         {"fd00:ec2::254", true},
		"the unspecified address is refused":             {"0.0.0.0", true},
		"the unspecified address with a zone is refused": {"::%eth0", true},
		"a metadata address with a zone is refused":      {"fd00:ec2::254%eth0", true},
		"multicast is refused":                           {"224.0.0.1", true},
		"a private address is allowed":                   {"10.1.2.3", false},
		"a public address is allowed":                    {"20.50.2.1", false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := Forbidden(netip.MustParseAddr(tc.addr)) != ""; got != tc.forbidden {
				t.Errorf("Forbidden(%s) = %v, want %v", tc.addr, got, tc.forbidden)
			}
		})
	}
}

// target starts an HTTPS server with its own CA on a namespace address,
// named credit.example.com, that echoes the Host and SNI it saw.
func target(t *testing.T, handler ...http.HandlerFunc) (*httptest.Server, Target, *Originator) {
	t.Helper()
	l := testenv.ListenNetns(t, 3)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "host="+r.Host+" sni="+r.TLS.ServerName+" path="+r.URL.Path)
	})
	if len(handler) > 0 {
		h = handler[0]
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener = l
	srv.StartTLS()
	t.Cleanup(srv.Close)
	ip := netip.MustParseAddr(testenv.NetnsAddr(3))
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	caPEM := pemOf(srv.Certificate().Raw)
	o := New(nil)
	o.Dialer.LookupNetIP = func(_ context.Context, host string) ([]netip.Addr, error) {
		if host == "credit.example.com" {
			return []netip.Addr{ip}, nil
		}
		return nil, errors.New("no such host")
	}
	return srv, Target{Name: "credit", DNSName: "credit.example.com", Port: int32(port), Protocol: HTTPS, CABundle: caPEM}, o
}

// serve connects a client to the originator through a socket pair.
func serve(t *testing.T, o *Originator, tg Target) net.Conn {
	t.Helper()
	client, gateway := net.Pipe()
	go func() { _ = o.Serve(context.Background(), gateway, tg, "test") }()
	t.Cleanup(func() { _ = client.Close() })
	return client
}

func roundTrip(t *testing.T, c net.Conn, host string) (*http.Response, string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET /score HTTP/1.1\r\nHost: "+host+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

func TestHTTPSTargetGetsHostAndSNIOfItsDNSName(t *testing.T) {
	testenv.RequireNetns(t)
	_, tg, o := target(t)
	resp, body := roundTrip(t, serve(t, o, tg), "credit-score-east.backbone-egress.svc.cluster.local")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: %s", resp.Status, body)
	}
	want := "host=credit.example.com:" + strings.Split(tg.address(), ":")[1] + " sni=credit.example.com path=/score"
	if body != want {
		t.Errorf("target saw %q, want %q", body, want)
	}
	if d, err := o.Probe(context.Background(), tg); err != nil || d <= 0 {
		t.Errorf("probe: %v %v", d, err)
	}
}

func TestTargetWithAnotherCAIsRefused(t *testing.T) {
	testenv.RequireNetns(t)
	_, tg, o := target(t)
	tg.CABundle = otherCA(t)
	resp, body := roundTrip(t, serve(t, o, tg), "x")
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, "certificate") {
		t.Errorf("want 502 naming the certificate, got %s: %s", resp.Status, body)
	}
}

func TestForbiddenAnswersAreNeverDialled(t *testing.T) {
	for _, answer := range []string{"127.0.0.1", "169.254.169.254", "::1"} {
		t.Run(answer, func(t *testing.T) {
			o := New(nil)
			o.Dialer.LookupNetIP = func(context.Context, string) ([]netip.Addr, error) {
				return []netip.Addr{netip.MustParseAddr(answer)}, nil
			}
			tg := Target{Name: "evil", DNSName: "evil.example.test", Port: 443, Protocol: HTTPS}
			resp, body := roundTrip(t, serve(t, o, tg), "x")
			if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "forbidden address") {
				t.Errorf("want 403 forbidden address, got %s: %s", resp.Status, body)
			}
			if _, err := o.Probe(context.Background(), tg); !errors.Is(err, ErrForbiddenAddress) {
				t.Errorf("probe: want ErrForbiddenAddress, got %v", err)
			}
		})
	}
}

func TestTCPTargetPassesBytesAndHalfClose(t *testing.T) {
	testenv.RequireNetns(t)
	l := testenv.ListenNetns(t, 4)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer func() { _ = c.Close() }()
		b, _ := io.ReadAll(c) // until the client's half-close arrives
		_, _ = c.Write([]byte(strings.ToUpper(string(b))))
	}()
	tg := tcpTarget(l)
	c, _ := serveClient(t, context.Background(), tg)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = c.Write([]byte("select 1"))
	_ = c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "SELECT 1" {
		t.Fatalf("got %q, %v", got, err)
	}
}

// TestTCPTargetFailureReachesTheClientAsAFailure: a target that resets
// its connection mid-answer resets the client's too, and Serve reports
// it (a stream's server resets the stream on it). Passed on as a
// half-close, the cut-off answer would read as a complete one.
func TestTCPTargetFailureReachesTheClientAsAFailure(t *testing.T) {
	testenv.RequireNetns(t)
	l := testenv.ListenNetns(t, 4)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		_, _ = io.ReadAll(c)
		_, _ = c.Write([]byte("partial"))
		time.Sleep(50 * time.Millisecond) // the bytes cross before the reset
		_ = c.(*net.TCPConn).SetLinger(0)
		_ = c.Close()
	}()
	tg := tcpTarget(l)
	c, served := serveClient(t, context.Background(), tg)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = c.Write([]byte("select 1"))
	_ = c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the client read %q and then %v, want the connection reset", got, err)
	}
	select {
	case err := <-served:
		if err == nil {
			t.Error("Serve returned nil for a tunnel whose target failed")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
}

// TestTCPTargetCleanCloseIsACleanEnd: a target that answers and closes
// while the caller's side is still open ends the tunnel cleanly, also
// for a caller without a half-close (a tunnel stream, here a pipe): the
// caller reads the whole answer and its end, and Serve reports no error.
func TestTCPTargetCleanCloseIsACleanEnd(t *testing.T) {
	testenv.RequireNetns(t)
	l := testenv.ListenNetns(t, 4)
	answer := strings.Repeat("backbone ", 100_000)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		buf := make([]byte, 5)
		_, _ = io.ReadFull(c, buf)
		_, _ = io.WriteString(c, answer)
		_ = c.Close()
	}()
	tg := tcpTarget(l)
	o := New(nil)
	client, server := net.Pipe()
	defer func() { _ = client.Close() }()
	served := make(chan error, 1)
	go func() { served <- o.Serve(context.Background(), server, tg, "test") }()
	_ = client.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := client.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(client)
	if err != nil || len(got) != len(answer) {
		t.Errorf("read %d of %d bytes, then %v; want all and a clean end", len(got), len(answer), err)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve: %v, want nil for a target that closed cleanly", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
}

// tcpTarget is a tcp egress target at l, a listener in the namespace.
func tcpTarget(l net.Listener) Target {
	return Target{Name: "db", DNSName: testenv.NetnsAddr(4), Port: int32(l.Addr().(*net.TCPAddr).Port), Protocol: TCP}
}

// serveClient connects a client to an originator serving tg with ctx,
// as a local application's connection; served gets Serve's result.
func serveClient(t *testing.T, ctx context.Context, tg Target) (net.Conn, <-chan error) {
	t.Helper()
	return serveClientBy(t, ctx, New(nil), tg)
}

// serveClientBy is serveClient with the originator o.
func serveClientBy(t *testing.T, ctx context.Context, o *Originator, tg Target) (net.Conn, <-chan error) {
	t.Helper()
	clientL := testenv.ListenNetns(t, 5)
	served := make(chan error, 1)
	go func() {
		c, err := clientL.Accept()
		if err != nil {
			served <- err
			return
		}
		served <- o.Serve(ctx, c, tg, "test")
	}()
	c, err := net.Dial("tcp", clientL.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, served
}

// TestTCPTunnelEndsWithItsContext: a tunnel whose stream ended (its
// context cancelled) ends the upstream connection, even one the upstream
// holds open in silence after the client's half-close.
func TestTCPTunnelEndsWithItsContext(t *testing.T) {
	testenv.RequireNetns(t)
	l := testenv.ListenNetns(t, 4)
	release := make(chan struct{})
	defer close(release)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer func() { _ = c.Close() }()
		_, _ = io.ReadAll(c) // the client's half-close; then silence
		<-release
	}()
	tg := tcpTarget(l)
	ctx, cancel := context.WithCancel(context.Background())
	c, served := serveClient(t, ctx, tg)
	_, _ = c.Write([]byte("select 1"))
	_ = c.(*net.TCPConn).CloseWrite()
	time.Sleep(100 * time.Millisecond) // the half-close crossed
	cancel()
	select {
	case <-served: // Serve returns once both connections are closed
	case <-time.After(10 * time.Second):
		t.Fatal("the tunnel outlived its context")
	}
}

// TestRedirectsAreNotFollowed: a target that redirects elsewhere gets its
// redirect passed back to the caller; the gateway never fetches the other
// host itself, even one it could reach.
func TestRedirectsAreNotFollowed(t *testing.T) {
	testenv.RequireNetns(t)
	var elsewhere atomic.Int64
	other := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		elsewhere.Add(1)
		_, _ = io.WriteString(w, "secrets")
	}))
	other.Listener = testenv.ListenNetns(t, 4)
	other.StartTLS()
	t.Cleanup(other.Close)

	_, tg, o := target(t, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "https://elsewhere.example.com:"+strings.Split(other.Listener.Addr().String(), ":")[1]+"/steal", http.StatusFound)
	})
	lookup := o.Dialer.LookupNetIP
	o.Dialer.LookupNetIP = func(ctx context.Context, host string) ([]netip.Addr, error) {
		if host == "elsewhere.example.com" {
			return []netip.Addr{netip.MustParseAddr(testenv.NetnsAddr(4))}, nil
		}
		return lookup(ctx, host)
	}
	resp, _ := roundTrip(t, serve(t, o, tg), "credit-score-east")
	if resp.StatusCode != http.StatusFound || !strings.Contains(resp.Header.Get("Location"), "elsewhere.example.com") {
		t.Fatalf("caller got %s, Location %q; want the target's 302 as it was", resp.Status, resp.Header.Get("Location"))
	}
	if n := elsewhere.Load(); n != 0 {
		t.Fatalf("the gateway followed the redirect: %d requests reached the other host", n)
	}
}

// TestWebsocketTargetEndReachesTheCaller: after a websocket upgrade the
// originator copies bytes both ways; a target that resets its connection
// resets the caller's, and one that closes cleanly ends the caller's
// cleanly (a websocket's own close frame may be lost with a reset, so the
// caller must be able to tell the two apart).
func TestWebsocketTargetEndReachesTheCaller(t *testing.T) {
	testenv.RequireNetns(t)
	for name, reset := range map[string]bool{"reset": true, "clean close": false} {
		t.Run(name, func(t *testing.T) {
			_, tg, o := target(t, func(w http.ResponseWriter, r *http.Request) {
				if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
					http.Error(w, "websocket only", http.StatusBadRequest)
					return
				}
				c, brw, err := http.NewResponseController(w).Hijack()
				if err != nil {
					return
				}
				_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nhello")
				_ = brw.Flush()
				time.Sleep(50 * time.Millisecond) // the bytes cross before the end
				if reset {
					_ = c.(*tls.Conn).NetConn().(*net.TCPConn).SetLinger(0)
					_ = c.(*tls.Conn).NetConn().Close()
					return
				}
				_ = c.Close()
			})
			c, served := serveClientBy(t, context.Background(), o, tg)
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			_, err := io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: credit\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
				"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
			if err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("upgrade: %v %v", resp, err)
			}
			got, err := io.ReadAll(br)
			if string(got) != "hello" || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("the caller read %q, then %v", got, err)
			}
			if reset && err == nil {
				t.Error("the target reset its websocket; the caller saw a clean end")
			}
			if !reset && err != nil {
				t.Errorf("the target closed its websocket cleanly; the caller saw %v", err)
			}
			_ = c.Close()
			select {
			case <-served:
			case <-time.After(10 * time.Second):
				t.Fatal("Serve did not return")
			}
		})
	}
}

// TestAnEarlyAnswerIsNotHeldBackByTheUpload: a target that refuses an
// upload before reading it (401, 413) has its answer passed on at once;
// the caller, which may wait for it before sending more (Expect:
// 100-continue, or a client that watches for an early answer), must not
// be made to send up to 256 KiB more first. net/http's server closes the
// connection after such an answer instead of draining the body, but only
// while the request's body is its own.
func TestAnEarlyAnswerIsNotHeldBackByTheUpload(t *testing.T) {
	testenv.RequireNetns(t)
	var interim atomic.Bool
	_, tg, o := target(t, func(w http.ResponseWriter, r *http.Request) {
		if interim.Load() {
			w.WriteHeader(http.StatusContinue) // then refuses after all
		}
		http.Error(w, "too large", http.StatusRequestEntityTooLarge)
	})
	for _, withInterim := range []bool{false, true} {
		interim.Store(withInterim)
		c, _ := serveClientBy(t, context.Background(), o, tg)
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: credit\r\nContent-Length: 10000000\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(make([]byte, 64<<10)); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		for err == nil && resp.StatusCode == http.StatusContinue {
			resp, err = http.ReadResponse(br, nil)
		}
		if err != nil {
			t.Fatalf("interim answer %v: no answer while the caller waits: %v", withInterim, err)
		}
		if resp.StatusCode != http.StatusRequestEntityTooLarge || !resp.Close {
			t.Errorf("interim answer %v: %s (closing: %v), want the target's 413 ending the connection: the rest of the body cannot be told from a next request",
				withInterim, resp.Status, resp.Close)
		}
	}

	// Answers to requests read whole keep the connection.
	interim.Store(false)
	c, _ := serveClientBy(t, context.Background(), o, tg)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	for _, req := range []string{"GET / HTTP/1.1\r\nHost: credit\r\n\r\n", "POST / HTTP/1.1\r\nHost: credit\r\nContent-Length: 2\r\n\r\nhi"} {
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		if resp.Close {
			t.Errorf("%q: the answer ends the connection", req)
		}
	}
}
