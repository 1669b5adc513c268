package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

// gatewayPair is two clusters with a gateway each, east exporting test
// backends and west holding hand-made mirrors of them.
type gatewayPair struct {
	east, west     *testenv.Cluster
	eastGW, westGW *gatewayProc
	pki            *pki
	mirrorAddr     map[string]string // mirror name → west gateway address:port
}

func setupGatewayPair(t *testing.T) *gatewayPair {
	t.Helper()
	testenv.RequireNetns(t)
	clusters := testenv.Start(t, "east", "west")
	p := &gatewayPair{east: clusters["east"], west: clusters["west"], pki: newPKI(t, trustDomain), mirrorAddr: map[string]string{}}

	// Backends on their own namespace addresses.
	web, h2, echo, sink := testenv.ListenNetns(t, 10), testenv.ListenNetns(t, 11), testenv.ListenNetns(t, 12), testenv.ListenNetns(t, 13)
	httpBackend(t, web, "east")
	h2cBackend(t, h2)
	upperEchoBackend(echo)
	sha256Backend(sink)
	port := func(l net.Listener) int32 { return int32(l.Addr().(*net.TCPAddr).Port) }
	exported := map[string]string{v1alpha1.ExportedLabel: "true"}
	for _, b := range []struct {
		name        string
		l           net.Listener
		labels      map[string]string
		annotations map[string]string
	}{
		{"web", web, exported, nil},
		{"h2", h2, exported, nil},
		{"echo", echo, exported, nil},
		{"sink", sink, exported, nil},
		{"internal", web, nil, nil},
		{"platform-only", web, exported, map[string]string{v1alpha1.AllowedClustersAnnotation: "platform, ops"}},
		{"west-allowed", web, exported, map[string]string{v1alpha1.AllowedClustersAnnotation: "platform,west"}},
		// East's mirror of a third cluster's Service, exported again:
		// served, it would carry west on to that cluster as east.
		{"a-mirror", web, map[string]string{v1alpha1.ExportedLabel: "true", v1alpha1.MirroredFromLabel: "elsewhere"}, nil},
	} {
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: b.name, Namespace: "demo", Labels: b.labels, Annotations: b.annotations},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "tcp", Port: 80}}},
		}
		registerService(t, p.east, svc, []string{b.l.Addr().(*net.TCPAddr).IP.String()}, map[string]int32{"tcp": port(b.l)})
	}

	p.eastGW = startGateway(t, p.east, 1, p.pki.issue(t, "east"))
	p.westGW = startGateway(t, p.west, 2, p.pki.issue(t, "west"))
	createLink(t, p.west, "east", p.eastGW.inbound)
	for i, name := range []string{"web", "h2", "echo", "sink", "internal", "platform-only", "west-allowed", "missing", "a-mirror"} {
		allocated := int32(20001 + i)
		createMirror(t, p.west, "east", "demo", name, []corev1.ServicePort{{Name: "tcp", Port: 80}}, map[string]int32{"tcp": allocated}, p.westGW.ip)
		p.mirrorAddr[name] = net.JoinHostPort(p.westGW.ip, fmt.Sprint(allocated))
	}
	for _, addr := range p.mirrorAddr {
		waitListening(t, addr)
	}
	return p
}

// expectWeb sends n HTTP/1.1 requests to addr, each of which east's web
// backend must answer.
func expectWeb(t *testing.T, addr string, n int) {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	for i := range n {
		resp, err := client.Get("http://" + addr + "/")
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(body) != "hello from east via HTTP/1.1" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
}

func TestGatewayTunnels(t *testing.T) {
	p := setupGatewayPair(t)

	t.Run("HTTP/1.1 requests reach the backend in the other cluster", func(t *testing.T) {
		expectWeb(t, p.mirrorAddr["web"], 20)
	})

	t.Run("an HTTP/2 stream flows both ways through the tunnel", func(t *testing.T) {
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
		buf := make([]byte, 64)
		for _, word := range []string{"ping", "pong", "done"} {
			if _, err := pw.Write([]byte(word)); err != nil {
				t.Fatal(err)
			}
			n, err := io.ReadAtLeast(resp.Body, buf, len(word))
			if err != nil || string(buf[:n]) != strings.ToUpper(word) {
				t.Fatalf("sent %q, got %q (%v)", word, buf[:n], err)
			}
		}
		_ = pw.Close()
	})

	t.Run("a raw TCP half-close crosses the tunnel both ways", func(t *testing.T) {
		c, err := net.Dial("tcp", p.mirrorAddr["echo"])
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = c.Close() }()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "half closed"); err != nil {
			t.Fatal(err)
		}
		_ = c.(*net.TCPConn).CloseWrite()
		got, err := io.ReadAll(c) // ends only when the backend's FIN came back
		if err != nil || string(got) != "HALF CLOSED" {
			t.Fatalf("got %q, %v", got, err)
		}
	})

	t.Run("64 MiB arrive intact", func(t *testing.T) {
		payload := make([]byte, 64<<20)
		_, _ = rand.Read(payload)
		want := sha256.Sum256(payload)
		c, err := net.Dial("tcp", p.mirrorAddr["sink"])
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = c.Close() }()
		_ = c.SetDeadline(time.Now().Add(60 * time.Second))
		start := time.Now()
		go func() {
			_, _ = c.Write(payload)
			_ = c.(*net.TCPConn).CloseWrite()
		}()
		got, err := io.ReadAll(c)
		if err != nil || !bytes.Equal(got, want[:]) {
			t.Fatalf("checksum %x, want %x (%v)", got, want, err)
		}
		t.Logf("64 MiB through the tunnel in %s", time.Since(start).Round(time.Millisecond))
	})

	refusedThroughTunnel := func(t *testing.T, mirror string) {
		t.Helper()
		c, err := net.Dial("tcp", p.mirrorAddr[mirror])
		if err != nil {
			return // refused at once
		}
		defer func() { _ = c.Close() }()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		got, err := io.ReadAll(c)
		if len(got) > 0 {
			t.Fatalf("%s answered %q; the east gateway must refuse it", mirror, got)
		}
		_ = err
	}
	t.Run("a service that is not exported is refused", func(t *testing.T) { refusedThroughTunnel(t, "internal") })
	t.Run("a service that does not exist is refused", func(t *testing.T) { refusedThroughTunnel(t, "missing") })
	t.Run("a service whose allowed-clusters excludes the caller is refused", func(t *testing.T) { refusedThroughTunnel(t, "platform-only") })
	t.Run("a mirror of another cluster's service is refused, exported or not", func(t *testing.T) { refusedThroughTunnel(t, "a-mirror") })
	t.Run("a service whose allowed-clusters names the caller is reachable", func(t *testing.T) {
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + p.mirrorAddr["west-allowed"] + "/")
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
	})

	t.Run("a second slice claiming a mirror's port does not take its traffic", func(t *testing.T) {
		// Written in another namespace by someone who can write
		// EndpointSlices there: it names web's port, for its own
		// namespace's web. The port stays with the mirror that holds it.
		_, webPort, _ := net.SplitHostPort(p.mirrorAddr["web"])
		n, _ := strconv.Atoi(webPort)
		createMirror(t, p.west, "east", "tenant", "web", []corev1.ServicePort{{Name: "tcp", Port: 80}}, map[string]int32{"tcp": int32(n)}, p.westGW.ip)
		conflicts := func() string {
			resp, err := http.Get("http://" + p.westGW.admin + "/metrics")
			if err != nil {
				return err.Error()
			}
			defer func() { _ = resp.Body.Close() }()
			body, _ := io.ReadAll(resp.Body)
			return regexp.MustCompile(`backbone_gateway_port_conflicts\{listeners="outbound"\} \d+`).FindString(string(body))
		}
		waitFor(t, 10*time.Second, "the conflict counted", func() bool { return strings.HasSuffix(conflicts(), "} 1") })
		expectWeb(t, p.mirrorAddr["web"], 20)
		if err := p.west.Client.Delete(context.Background(), &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: "web-east", Namespace: "tenant"}}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "the conflict gone", func() bool { return strings.HasSuffix(conflicts(), "} 0") })
	})

	t.Run("the refusals are counted by reason", func(t *testing.T) {
		resp, err := http.Get("http://" + p.eastGW.admin + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		for _, reason := range []string{"not_exported", "not_allowed", "not_found"} {
			if !regexp.MustCompile(`backbone_gateway_denied_total\{peer_cluster="west",reason="` + reason + `"\} [1-9]`).Match(body) {
				t.Errorf("no refusal counted for %s", reason)
			}
		}
		if strings.Contains(string(body), "missing.demo") {
			t.Error("a refused authority became a label value")
		}
	})
}
