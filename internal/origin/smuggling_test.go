package origin

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backbone-mesh/backbone/internal/testenv"
)

// wireTarget is an HTTPS egress target that keeps every byte it receives
// after TLS, per connection, as it arrives. It answers each request it can
// parse with a 200 framed by Content-Length, and drops a connection it
// cannot parse. Requests are counted afterwards from the recorded bytes,
// not from what this parser happened to accept.
type wireTarget struct {
	mu    sync.Mutex
	conns []*bytes.Buffer
}

func (wt *wireTarget) serve(l net.Listener, cfg *tls.Config) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		wt.mu.Lock()
		wire := &bytes.Buffer{}
		wt.conns = append(wt.conns, wire)
		wt.mu.Unlock()
		go func() {
			tc := tls.Server(c, cfg)
			defer func() { _ = tc.Close() }()
			br := bufio.NewReader(io.TeeReader(tc, lockedWriter{&wt.mu, wire}))
			for {
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				if _, err := io.Copy(io.Discard, req.Body); err != nil {
					return
				}
				if _, err := io.WriteString(tc, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"); err != nil {
					return
				}
			}
		}()
	}
}

// received returns what each connection delivered so far.
func (wt *wireTarget) received() [][]byte {
	wt.mu.Lock()
	defer wt.mu.Unlock()
	var out [][]byte
	for _, b := range wt.conns {
		out = append(out, bytes.Clone(b.Bytes()))
	}
	return out
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// wireRequest is one complete request found in a target's bytes.
type wireRequest struct {
	path string
	body string
}

// requestsOnTheWire splits what a target received on one connection into
// the complete requests in it, failing the test unless each one's framing
// is unambiguous to any HTTP/1.1 parser: every head line ends in CRLF, no
// line is folded, at most one Content-Length, Transfer-Encoding only as
// a single "chunked", never both. Trailing bytes that do not make a
// complete request (one the gateway abandoned) are not counted.
func requestsOnTheWire(t *testing.T, wire []byte) []wireRequest {
	t.Helper()
	var reqs []wireRequest
	for len(wire) > 0 {
		end := bytes.Index(wire, []byte("\r\n\r\n"))
		if lf := bytes.Index(wire, []byte("\n\n")); lf >= 0 && (end < 0 || lf < end) {
			t.Errorf("the target received a head ending in bare LF: %q", wire)
			return reqs
		}
		if end < 0 {
			return reqs // an incomplete head
		}
		head := string(wire[:end])
		lines := strings.Split(head, "\r\n")
		var contentLengths, encodings []string
		for _, line := range lines[1:] {
			if strings.ContainsAny(line, "\r\n") || strings.HasPrefix(line, " ") || strings.HasPrefix(line, "\t") {
				t.Errorf("the target received a bare CR or LF, or a folded line, in %q", head)
			}
			name, value, _ := strings.Cut(line, ":")
			switch strings.ToLower(name) {
			case "content-length":
				contentLengths = append(contentLengths, value)
			case "transfer-encoding":
				encodings = append(encodings, value)
			}
		}
		if len(contentLengths) > 1 || len(encodings) > 1 || len(contentLengths)+len(encodings) > 1 ||
			(len(encodings) == 1 && strings.TrimSpace(encodings[0]) != "chunked") {
			t.Errorf("the target received ambiguous framing: %q", head)
		}
		r := bytes.NewReader(wire)
		br := bufio.NewReader(r)
		req, err := http.ReadRequest(br)
		if err != nil {
			t.Errorf("the target received a head no parser takes (%v): %q", err, head)
			return reqs
		}
		body, err := io.ReadAll(req.Body)
		if err != nil {
			return reqs // an incomplete body
		}
		reqs = append(reqs, wireRequest{path: req.URL.Path, body: string(body)})
		wire = wire[len(wire)-r.Len()-br.Buffered():]
	}
	return reqs
}

// selfSigned is a certificate for dnsName and its PEM, to trust as the
// target's caBundle.
func selfSigned(t *testing.T, dnsName string) (tls.Certificate, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: dnsName}, DNSNames: []string{dnsName},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pemOf(der)
}

// smuggled is the request hidden in the ambiguous messages: the target
// must never see it as a request of its own.
const smuggled = "GET /smuggled HTTP/1.1\r\nHost: credit.example.com\r\n\r\n"

// TestAmbiguousFramingNeverReachesTheTarget sends requests whose length
// two parsers could read differently to an HTTPS egress target through
// the originator — the only place a gateway parses HTTP from callers,
// whether they come from a local application or through a tunnel stream.
// Each is refused before anything reaches the target, or the target
// receives exactly one request, re-framed so that no parser can read it
// another way, and never the hidden one; a message read by its
// Transfer-Encoding ends its connection, so what a Content-Length would
// have covered beyond it is never read as a request.
func TestAmbiguousFramingNeverReachesTheTarget(t *testing.T) {
	testenv.RequireNetns(t)
	hidden := "0\r\n\r\n" + smuggled // the chunked end, then the hidden request
	tests := map[string]struct {
		request string
		// status is the caller's answer: 200 when the target got the
		// request, or the gateway's refusal (RFC 9112 6.1: 501 for a
		// transfer coding it does not implement, else 400).
		status int
		body   string // what the target receives as the body
	}{
		"Content-Length and Transfer-Encoding: the chunked body wins and the connection ends after it": {
			request: "POST /score HTTP/1.1\r\nHost: credit\r\nContent-Length: " + strconv.Itoa(len(hidden)) + "\r\nTransfer-Encoding: chunked\r\n\r\n" + hidden,
			status:  http.StatusOK,
		},
		"Transfer-Encoding before a short Content-Length: the whole chunked body is one body": {
			request: "POST /score HTTP/1.1\r\nHost: credit\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n" +
				strconv.FormatInt(int64(len(smuggled)), 16) + "\r\n" + smuggled + "\r\n0\r\n\r\n",
			status: http.StatusOK,
			body:   smuggled,
		},
		"two differing Content-Length headers are refused": {
			request: "POST /score HTTP/1.1\r\nHost: credit\r\nContent-Length: 0\r\nContent-Length: " + strconv.Itoa(len(smuggled)) + "\r\n\r\n" + smuggled,
			status:  http.StatusBadRequest,
		},
		"a Content-Length list is refused": {
			request: "POST /score HTTP/1.1\r\nHost: credit\r\nContent-Length: 0, " + strconv.Itoa(len(smuggled)) + "\r\n\r\n" + smuggled,
			status:  http.StatusBadRequest,
		},
		"a signed Content-Length is refused": {
			request: "POST /score HTTP/1.1\r\nHost: credit\r\nContent-Length: +" + strconv.Itoa(len(smuggled)) + "\r\n\r\n" + smuggled,
			status:  http.StatusBadRequest,
		},
		"two equal Content-Length headers are forwarded as one": {
			request: "POST /score HTTP/1.1\r\nHost: credit\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
			status:  http.StatusOK,
			body:    "hello",
		},
		"Transfer-Encoding: chunked, identity is refused": {
			request: "POST /score HTTP/1.1\r\nHost: credit\r\nContent-Length: " + strconv.Itoa(len(hidden)) + "\r\nTransfer-Encoding: chunked, identity\r\n\r\n" + hidden,
			status:  http.StatusNotImplemented,
		},
		"Transfer-Encoding: identity, chunked is refused": {
			request: "POST /score HTTP/1.1\r\nHost: credit\r\nTransfer-Encoding: identity, chunked\r\n\r\n" + hidden,
			status:  http.StatusNotImplemented,
		},
		"two Transfer-Encoding headers are refused": {
			request: "POST /score HTTP/1.1\r\nHost: credit\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n" + hidden,
			status:  http.StatusNotImplemented,
		},
		"Transfer-Encoding: xchunked is refused": {
			request: "POST /score HTTP/1.1\r\nHost: credit\r\nContent-Length: " + strconv.Itoa(len(hidden)) + "\r\nTransfer-Encoding: xchunked\r\n\r\n" + hidden,
			status:  http.StatusNotImplemented,
		},
		"Transfer-Encoding with a vertical tab before chunked is refused": {
			request: "POST /score HTTP/1.1\r\nHost: credit\r\nContent-Length: " + strconv.Itoa(len(hidden)) + "\r\nTransfer-Encoding: \x0bchunked\r\n\r\n" + hidden,
			status:  http.StatusBadRequest,
		},
		"a space before the colon of Transfer-Encoding is refused": {
			request: "POST /score HTTP/1.1\r\nHost: credit\r\nContent-Length: " + strconv.Itoa(len(hidden)) + "\r\nTransfer-Encoding : chunked\r\n\r\n" + hidden,
			status:  http.StatusBadRequest,
		},
		"Transfer-Encoding folded into the previous header is that header's value, and Content-Length frames the body": {
			request: "POST /score HTTP/1.1\r\nHost: credit\r\nContent-Length: " + strconv.Itoa(len(hidden)) + "\r\nX-Note: a\r\n Transfer-Encoding: chunked\r\n\r\n" + hidden,
			status:  http.StatusOK,
			body:    hidden,
		},
		"bare LF line endings are forwarded as one request with CRLF": {
			request: "POST /score HTTP/1.1\nHost: credit\nContent-Length: 5\n\nhello",
			status:  http.StatusOK,
			body:    "hello",
		},
		"bare LF in a chunked body never completes a request": {
			request: "POST /score HTTP/1.1\r\nHost: credit\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n" + smuggled,
			status:  http.StatusBadRequest,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cert, caPEM := selfSigned(t, "credit.example.com")
			l := testenv.ListenNetns(t, 3)
			wt := &wireTarget{}
			go wt.serve(l, &tls.Config{Certificates: []tls.Certificate{cert}}) // no ALPN: HTTP/1.1 on the wire
			tg := Target{Name: "credit", DNSName: "credit.example.com", Port: int32(l.Addr().(*net.TCPAddr).Port), Protocol: HTTPS, CABundle: caPEM}
			o := New(nil)
			o.Dialer.LookupNetIP = func(context.Context, string) ([]netip.Addr, error) {
				return []netip.Addr{netip.MustParseAddr(testenv.NetnsAddr(3))}, nil
			}

			caller, served := callOriginator(t, o, tg)
			if _, err := io.WriteString(caller, tc.request); err != nil {
				t.Fatal(err)
			}
			var statuses []int
			br := bufio.NewReader(caller)
			for {
				// A connection kept open is done once it is quiet.
				_ = caller.SetReadDeadline(time.Now().Add(time.Second))
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					break
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				statuses = append(statuses, resp.StatusCode)
			}
			_ = caller.Close()
			<-served // everything forwarded reached the target before this

			var reqs []wireRequest
			for _, wire := range wt.received() {
				reqs = append(reqs, requestsOnTheWire(t, wire)...)
			}
			if len(statuses) != 1 || statuses[0] != tc.status {
				t.Errorf("the caller got %v, want one %d", statuses, tc.status)
			}
			switch {
			case tc.status != http.StatusOK && len(reqs) != 0:
				t.Errorf("refused, yet the target received %+v", reqs)
			case tc.status == http.StatusOK && (len(reqs) != 1 || reqs[0].path != "/score" || reqs[0].body != tc.body):
				t.Errorf("the target received %+v, want exactly one request for /score with body %q", reqs, tc.body)
			}
		})
	}
}

// callOriginator connects a caller to the originator over TCP (as the
// gateway's egress listener does) and reports when the originator is done
// with the connection.
func callOriginator(t *testing.T, o *Originator, tg Target) (net.Conn, <-chan struct{}) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	served := make(chan struct{})
	go func() {
		defer close(served)
		c, err := l.Accept()
		if err != nil {
			return
		}
		if err := o.Serve(context.Background(), c, tg, "test"); err != nil && !errors.Is(err, net.ErrClosed) {
			t.Logf("serve: %v", err)
		}
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, served
}
