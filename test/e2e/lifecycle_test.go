package e2e

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/backbone-mesh/backbone/internal/certs"
)

// TestGatewayDrainsOnSIGTERM: two west gateway replicas behind the mirror;
// one gets SIGTERM during a steady request stream. Clients pick an
// endpoint and, as kube-proxy would once the endpoint is gone, go to the
// other when a connection is refused. No request may fail.
func TestGatewayDrainsOnSIGTERM(t *testing.T) {
	p := setupGatewayPair(t)
	second := startGateway(t, p.west, 3, p.pki.issue(t, "west"))
	port := strings.Split(p.mirrorAddr["web"], ":")[1]
	endpoints := []string{net.JoinHostPort(p.westGW.ip, port), net.JoinHostPort(second.ip, port)}
	waitListening(t, endpoints[1])

	var ok, failed atomic.Int64
	var mu sync.Mutex
	var failures []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				var err error
				for attempt := range 2 {
					ep := endpoints[(w+i+attempt)%2]
					var resp *http.Response
					resp, err = client.Get("http://" + ep + "/?sleep=100ms")
					if err != nil && isDialError(err) {
						// The endpoint is gone (refused, or reset while still
						// in the closed listener's backlog) before any byte of
						// the request left: try the other, as a client does
						// once kube-proxy has dropped the endpoint.
						continue
					}
					if err == nil {
						body, _ := io.ReadAll(resp.Body)
						_ = resp.Body.Close()
						if string(body) != "hello from east via HTTP/1.1" {
							err = fmt.Errorf("body %q", body)
						}
					}
					break
				}
				if err != nil {
					failed.Add(1)
					mu.Lock()
					failures = append(failures, err.Error())
					mu.Unlock()
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	time.Sleep(time.Second)
	second.signal(syscall.SIGTERM)
	second.wait(t, 30*time.Second)
	if code := second.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("the drained gateway exited with %d", code)
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	t.Logf("%d requests succeeded, %d failed", ok.Load(), failed.Load())
	if failed.Load() > 0 {
		t.Fatalf("%d requests failed during the rolling restart: %v", failed.Load(), failures)
	}
	if ok.Load() < 20 {
		t.Fatalf("only %d requests ran", ok.Load())
	}
}

// TestGatewayServesThroughItsShutdownDelay: after SIGTERM the gateway is
// not ready at once, but goes on serving new connections for
// --shutdown-delay — the time kube-proxy takes to stop sending them once
// it sees the endpoint not ready — and only then closes its listeners.
// Clients here do not retry elsewhere: they are those kube-proxy still
// sent to this pod.
func TestGatewayServesThroughItsShutdownDelay(t *testing.T) {
	p := setupGatewayPair(t)
	const delay = 3 * time.Second
	second := startGateway(t, p.west, 3, p.pki.issue(t, "west"), "--shutdown-delay", delay.String())
	ep := net.JoinHostPort(second.ip, strings.Split(p.mirrorAddr["web"], ":")[1])
	waitListening(t, ep)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	get := func() error {
		resp, err := client.Get("http://" + ep + "/")
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if string(body) != "hello from east via HTTP/1.1" {
			return fmt.Errorf("body %q", body)
		}
		return nil
	}
	signalled := time.Now()
	second.signal(syscall.SIGTERM)
	waitFor(t, 2*time.Second, "readiness false", func() bool {
		resp, err := http.Get("http://" + second.admin + "/readyz")
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	})
	n := 0
	for time.Since(signalled) < delay-time.Second {
		if err := get(); err != nil {
			t.Fatalf("%s after SIGTERM, within the shutdown delay: %v", time.Since(signalled).Round(time.Millisecond), err)
		}
		n++
	}
	second.wait(t, 30*time.Second)
	if code := second.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("the gateway exited with %d", code)
	}
	if took := time.Since(signalled); took < delay {
		t.Errorf("the gateway exited %s after SIGTERM, before its shutdown delay of %s", took, delay)
	}
	if err := get(); err == nil {
		t.Error("the stopped gateway's port still answers")
	}
	t.Logf("%d new connections served while not ready", n)
}

// isDialError: the connection was never established, so no request was sent.
func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// TestGatewayReloadsItsIdentity: the identity files are replaced while a
// long stream runs; the stream survives and new connections get the new
// certificate.
func TestGatewayReloadsItsIdentity(t *testing.T) {
	p := setupGatewayPair(t)
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &protocols}
	defer tr.CloseIdleConnections()
	pr, pw := io.Pipe()
	req, _ := http.NewRequest(http.MethodPost, "http://"+p.mirrorAddr["h2"]+"/stream", pr)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	exchange := func(word string) {
		t.Helper()
		if _, err := pw.Write([]byte(word)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		n, err := io.ReadAtLeast(resp.Body, buf, len(word))
		if err != nil || string(buf[:n]) != strings.ToUpper(word) {
			t.Fatalf("sent %q, got %q (%v)", word, buf[:n], err)
		}
	}
	exchange("before")

	servedSerial := func() *big.Int {
		c := identityCert(t, p.pki.anchor, "west", time.Hour)
		conn, err := tls.Dial("tcp", p.eastGW.inbound, &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{*c}, NextProtos: []string{"h2"}})
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = conn.Close() }()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber
	}
	old := servedSerial()
	certPEM, keyPEM, err := p.pki.anchor.Issue("east", 2*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := certs.WriteIdentity(p.eastGW.identityDir, certPEM, keyPEM, p.pki.anchor.CertPEM()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the east gateway to serve its new certificate", func() bool { return servedSerial().Cmp(old) != 0 })
	exchange("after") // the stream opened before the rotation still works
	_ = pw.Close()

	resp2, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + p.mirrorAddr["web"] + "/")
	if err != nil {
		t.Fatalf("a new tunnel after the rotation: %v", err)
	}
	_ = resp2.Body.Close()
}

// TestGatewayKilledUnderLoad: with two west gateway replicas under a steady
// request stream, SIGKILL one. Only requests on the killed replica fail
// (at most one per client in flight there); the survivor keeps serving; the
// restarted replica serves again.
func TestGatewayKilledUnderLoad(t *testing.T) {
	p := setupGatewayPair(t)
	id := p.pki.issue(t, "west")
	second := startGateway(t, p.west, 3, id)
	port := strings.Split(p.mirrorAddr["web"], ":")[1]
	endpoints := []string{net.JoinHostPort(p.westGW.ip, port), net.JoinHostPort(second.ip, port)}
	waitListening(t, endpoints[1])

	const workers = 8
	var ok, failed atomic.Int64
	var mu sync.Mutex
	failures := map[string]int{} // endpoint → failed requests
	var killed atomic.Bool
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ep := endpoints[(w+i)%2]
				if ep == endpoints[1] && killed.Load() {
					ep = endpoints[0] // kube-proxy dropped the dead endpoint
				}
				resp, err := client.Get("http://" + ep + "/?sleep=50ms")
				if err == nil {
					_, _ = io.ReadAll(resp.Body)
					_ = resp.Body.Close()
					ok.Add(1)
					continue
				}
				failed.Add(1)
				mu.Lock()
				failures[ep]++
				mu.Unlock()
			}
		}()
	}
	time.Sleep(time.Second)
	second.signal(syscall.SIGKILL)
	second.wait(t, 10*time.Second)
	time.Sleep(100 * time.Millisecond) // endpoint removal is not instantaneous either
	killed.Store(true)
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	t.Logf("%d requests succeeded, %d failed: %v", ok.Load(), failed.Load(), failures)
	if failures[endpoints[0]] > 0 {
		t.Fatalf("%d requests failed on the surviving replica", failures[endpoints[0]])
	}
	// In flight on the killed replica when it died, plus each client's
	// attempts in the 100ms before the endpoint was dropped.
	if n := failures[endpoints[1]]; n > 4*workers {
		t.Fatalf("%d requests failed on the killed replica: more than the traffic it had", n)
	}

	// The replica comes back on the same address and serves again.
	startGateway(t, p.west, 3, id)
	waitListening(t, endpoints[1])
	resp, err := http.Get("http://" + endpoints[1] + "/")
	if err != nil {
		t.Fatalf("the restarted replica: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if string(body) != "hello from east via HTTP/1.1" {
		t.Fatalf("the restarted replica answered %q", body)
	}
}

// TestTrustAnchorRotationUnderLoad: under a steady request stream, both
// gateways first trust the old and the new anchor, then get identities
// from the new one, then drop the old. No request fails; at the end an
// identity from the old anchor is refused and one from the new accepted.
func TestTrustAnchorRotationUnderLoad(t *testing.T) {
	p := setupGatewayPair(t)
	newAnchor, err := certs.NewAnchor(trustDomain, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var ok, failed atomic.Int64
	var mu sync.Mutex
	var failures []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := client.Get("http://" + p.mirrorAddr["web"] + "/")
				if err == nil {
					_, _ = io.ReadAll(resp.Body)
					_ = resp.Body.Close()
					if resp.StatusCode == http.StatusOK {
						ok.Add(1)
						continue
					}
					err = errors.New(resp.Status)
				}
				failed.Add(1)
				mu.Lock()
				failures = append(failures, err.Error())
				mu.Unlock()
			}
		}()
	}
	// ready asks east's gateway GET /ready with an identity from anchor a
	// and returns the issuer of the certificate east served ("" when the
	// identity was refused).
	ready := func(a *certs.Anchor) string {
		c := identityCert(t, a, "west", time.Hour)
		tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{*c}}, ForceAttemptHTTP2: true}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("https://" + p.eastGW.inbound + "/ready")
		if err != nil {
			return ""
		}
		defer func() { _ = resp.Body.Close() }()
		if resp.StatusCode != http.StatusOK {
			return ""
		}
		return string(resp.TLS.PeerCertificates[0].RawIssuer)
	}
	both := append(append([]byte{}, p.pki.anchor.CertPEM()...), newAnchor.CertPEM()...)
	write := func(g *gatewayProc, cluster string, a *certs.Anchor, bundle []byte) {
		crt, key, err := a.Issue(cluster, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := certs.WriteIdentity(g.identityDir, crt, key, bundle); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(time.Second)
	// 1. Trust both anchors (identities still from the old one).
	write(p.eastGW, "east", p.pki.anchor, both)
	write(p.westGW, "west", p.pki.anchor, both)
	waitFor(t, 30*time.Second, "east to accept the new anchor", func() bool { return ready(newAnchor) != "" })
	time.Sleep(3 * time.Second) // west's reload too
	// 2. Identities from the new anchor.
	write(p.eastGW, "east", newAnchor, both)
	write(p.westGW, "west", newAnchor, both)
	waitFor(t, 30*time.Second, "east to serve an identity from the new anchor", func() bool {
		return ready(newAnchor) == string(newAnchor.Cert.RawSubject)
	})
	time.Sleep(3 * time.Second)
	// 3. Drop the old anchor.
	write(p.eastGW, "east", newAnchor, newAnchor.CertPEM())
	write(p.westGW, "west", newAnchor, newAnchor.CertPEM())
	waitFor(t, 30*time.Second, "east to refuse identities from the old anchor", func() bool { return ready(p.pki.anchor) == "" })
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	t.Logf("%d requests succeeded, %d failed across the rotation", ok.Load(), failed.Load())
	if failed.Load() > 0 {
		t.Fatalf("%d requests failed during the rotation: %v", failed.Load(), failures)
	}
	if ok.Load() < 50 {
		t.Fatalf("only %d requests ran", ok.Load())
	}
	if ready(newAnchor) != string(newAnchor.Cert.RawSubject) {
		t.Fatal("east does not accept an identity from the new anchor")
	}
}
