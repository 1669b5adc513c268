package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/backbone-mesh/backbone/internal/certs"
)

// peerClient is an HTTP/2 client presenting the given certificate (or
// none) to a gateway's inbound port.
func peerClient(cert *tls.Certificate, roots *x509.CertPool, maxVersion uint16) *http.Client {
	cfg := &tls.Config{RootCAs: roots, InsecureSkipVerify: true, MinVersion: tls.VersionTLS12, MaxVersion: maxVersion, NextProtos: []string{"h2"}}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	var protocols http.Protocols
	protocols.SetHTTP2(true)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, Protocols: &protocols}}
}

func identityCert(t *testing.T, anchor *certs.Anchor, cluster string, validity time.Duration) *tls.Certificate {
	t.Helper()
	c, k, err := anchor.Issue(cluster, validity)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(c, k)
	if err != nil {
		t.Fatal(err)
	}
	return &cert
}

func TestGatewayRefusesBadPeers(t *testing.T) {
	p := setupGatewayPair(t)
	ready := "https://" + p.eastGW.inbound + "/ready"

	valid := identityCert(t, p.pki.anchor, "west", time.Hour)
	resp, err := peerClient(valid, nil, 0).Get(ready)
	if err != nil {
		t.Fatalf("a valid identity must be served: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != "east" {
		t.Fatalf("GET /ready = %s %q", resp.Status, body)
	}

	otherAnchor, _ := certs.NewAnchor(trustDomain, time.Hour)
	otherDomain, _ := certs.NewAnchor("evil.example", time.Hour)
	refused := map[string]*http.Client{
		"no client certificate":                   peerClient(nil, nil, 0),
		"a certificate from another trust anchor": peerClient(identityCert(t, otherAnchor, "west", time.Hour), nil, 0),
		"a certificate of another trust domain":   peerClient(identityCert(t, otherDomain, "west", time.Hour), nil, 0),
		"an expired certificate":                  peerClient(identityCert(t, p.pki.anchor, "west", -time.Minute), nil, 0),
		"TLS 1.2":                                 peerClient(valid, nil, tls.VersionTLS12),
	}
	for name, client := range refused {
		t.Run("refuses "+name, func(t *testing.T) {
			resp, err := client.Get(ready)
			if err == nil {
				_ = resp.Body.Close()
				t.Fatalf("served with %s: %s", name, resp.Status)
			}
		})
	}

	t.Run("refuses plain HTTP on the inbound port", func(t *testing.T) {
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + p.eastGW.inbound + "/ready")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK || strings.Contains(string(body), "east") {
				t.Fatalf("plain HTTP was served: %s %q", resp.Status, body)
			}
		}
	})

	t.Run("refuses a valid identity asking for a service that is not exported", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodConnect, "https://"+p.eastGW.inbound, nil)
		req.Host = "internal.demo.svc.cluster.local:80"
		resp, err := peerClient(valid, nil, 0).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("status %s, want 403", resp.Status)
		}
	})

	t.Run("cuts off a client that never finishes its handshake", func(t *testing.T) {
		c, err := net.Dial("tcp", p.eastGW.inbound)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = c.Close() }()
		_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))
		_, err = c.Read(make([]byte, 1)) // we send nothing at all
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("the gateway kept a silent connection open for a minute")
		}
	})

	t.Run("hostile authorities create no series", func(t *testing.T) { hostileAuthoritiesCreateNoSeries(t, p) })
}

// seriesSet is the series (name and labels) a gateway's /metrics page
// exposes, with their values.
func seriesSet(t *testing.T, admin string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	set := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.LastIndexByte(line, ' '); i > 0 {
			v, _ := strconv.ParseFloat(line[i+1:], 64)
			set[line[:i]] = v
		}
	}
	return set
}

// hostileAuthoritiesCreateNoSeries sends a gateway hundreds of CONNECTs
// for random authorities — unknown services, random ports, egress-looking
// hosts, junk — and random paths: after one of each kind has been counted,
// the rest must not add a single series to /metrics.
func hostileAuthoritiesCreateNoSeries(t *testing.T, p *gatewayPair) {
	client := peerClient(identityCert(t, p.pki.anchor, "west", time.Hour), nil, 0)
	rng := rand.New(rand.NewPCG(1, 2))
	word := func() string {
		const letters = "abcdefghijklmnopqrstuvwxyz0123456789"
		b := make([]byte, 1+rng.IntN(20))
		for i := range b {
			b[i] = letters[rng.IntN(len(letters))]
		}
		return string(b)
	}
	kinds := []func() string{
		func() string { return word() + ".demo.svc.cluster.local:80" },
		func() string { return "internal.demo.svc.cluster.local:" + strconv.Itoa(1+rng.IntN(65535)) },
		func() string { return word() + "." + word() + ".svc.cluster.local:" + strconv.Itoa(1+rng.IntN(65535)) },
		func() string { return word() + ".example.com:443" },
		func() string {
			return fmt.Sprintf("10.%d.%d.%d:%d", rng.IntN(256), rng.IntN(256), rng.IntN(256), 1+rng.IntN(65535))
		},
		func() string { return "[fd00::" + strconv.Itoa(rng.IntN(9999)) + "]:443" },
		func() string { return word() + ":" + word() },
		func() string { return strings.Repeat(word(), 20) + ".svc.cluster.local:80" },
	}
	send := func(authority string) {
		req, _ := http.NewRequest(http.MethodConnect, "https://"+p.eastGW.inbound, nil)
		req.Host = authority
		if resp, err := client.Do(req); err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				t.Errorf("CONNECT %s was served", authority)
			}
		}
		resp, err := client.Get("https://" + p.eastGW.inbound + "/" + word())
		if err == nil {
			_ = resp.Body.Close()
		}
	}
	for _, kind := range kinds {
		send(kind())
	}
	before := seriesSet(t, p.eastGW.admin)
	const n = 400
	for i := range n {
		send(kinds[i%len(kinds)]())
	}
	after := seriesSet(t, p.eastGW.admin)
	var added []string
	denied := 0.0
	for s, v := range after {
		if _, ok := before[s]; !ok {
			added = append(added, s)
		}
		if strings.HasPrefix(s, "backbone_gateway_denied_total{") {
			denied += v - before[s]
		}
	}
	if len(added) > 0 {
		t.Errorf("%d hostile requests added %d series, e.g. %v", n, len(added), added[:min(5, len(added))])
	}
	// The requests must have reached the gateway and been refused there,
	// or the test proves nothing.
	if denied < n {
		t.Errorf("only %.0f of %d hostile requests were counted as denied", denied, 2*n)
	}
	t.Logf("%d hostile CONNECTs and %d random GETs (%.0f counted as denied): %d series before, %d after", n, n, denied, len(before), len(after))
}
