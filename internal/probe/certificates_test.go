package probe

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/certs"
	"github.com/backbone-mesh/backbone/internal/gateway"
	"github.com/backbone-mesh/backbone/internal/identity"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

const testDomain = "probe.backbone.test"

func newAnchor(t *testing.T) *certs.Anchor {
	t.Helper()
	a, err := certs.NewAnchor(testDomain, 365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// issueCert returns a parsed identity certificate valid for validity (a
// negative validity gives one that expired then).
func issueCert(t *testing.T, a *certs.Anchor, cluster string, validity time.Duration) *x509.Certificate {
	t.Helper()
	crt, _, err := a.Issue(cluster, validity)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(crt)
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestJudgeCertificates(t *testing.T) {
	anchor := newAnchor(t)
	now := time.Now()
	warn := 30 * 24 * time.Hour
	west := issueCert(t, anchor, "west", 365*24*time.Hour)
	east := issueCert(t, anchor, "east", 365*24*time.Hour)
	eastSoon := issueCert(t, anchor, "east", 20*24*time.Hour)
	eastExpired := issueCert(t, anchor, "east", -time.Minute)
	westExpired := issueCert(t, anchor, "west", -time.Minute)
	north := issueCert(t, anchor, "north", 365*24*time.Hour)
	const want = "spiffe://" + testDomain + "/cluster/east"
	refused := &net.OpError{Op: "remote error", Err: errors.New("tls: bad certificate")}

	tests := map[string]struct {
		local   *x509.Certificate
		hs      *Inspection
		status  metav1.ConditionStatus
		reason  string
		message string
	}{
		"both valid for long is Valid, with both dates": {
			local: west, hs: &Inspection{Peer: east},
			status: metav1.ConditionTrue, reason: ReasonCertificatesValid, message: stamp(east.NotAfter),
		},
		"a peer certificate within the warning window is Expiring, with its date": {
			local: west, hs: &Inspection{Peer: eastSoon},
			status: metav1.ConditionTrue, reason: ReasonCertificateExpiring, message: "east's gateway identity expires at " + stamp(eastSoon.NotAfter),
		},
		"an expired peer certificate is Expired even before the handshake fails on it": {
			local: west, hs: &Inspection{Peer: eastExpired},
			status: metav1.ConditionFalse, reason: ReasonCertificateExpired, message: "expired at " + stamp(eastExpired.NotAfter),
		},
		"our own expired certificate is Expired whatever the peer says": {
			local: westExpired, hs: &Inspection{Peer: east, Err: refused},
			status: metav1.ConditionFalse, reason: ReasonCertificateExpired, message: "this cluster's identity expired at " + stamp(westExpired.NotAfter),
		},
		"a peer chain our bundle does not know means no shared anchor": {
			local: west, hs: &Inspection{Peer: east, Err: x509.UnknownAuthorityError{}},
			status: metav1.ConditionFalse, reason: ReasonUnknownAuthority, message: "do not share a trust anchor",
		},
		"a valid certificate of ours refused by the peer is Refused": {
			local: west, hs: &Inspection{Peer: east, Err: refused},
			status: metav1.ConditionFalse, reason: ReasonCertificateRefused, message: "tls: bad certificate",
		},
		"a peer presenting another cluster's identity is WrongIdentity": {
			local: west, hs: &Inspection{Peer: north, Err: errors.New("peer is north")},
			status: metav1.ConditionFalse, reason: ReasonWrongIdentity, message: "presents spiffe://" + testDomain + "/cluster/north",
		},
		"no handshake yet is Unknown, not a failure": {
			local:  west,
			status: metav1.ConditionUnknown, reason: ReasonNotChecked, message: "no handshake",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			v := judgeCertificates(tc.local, tc.hs, "east", want, now, warn)
			if v.status != tc.status || v.reason != tc.reason || !strings.Contains(v.message, tc.message) {
				t.Errorf("got %s %s %q; want %s %s, a message containing %q", v.status, v.reason, v.message, tc.status, tc.reason, tc.message)
			}
			if again := judgeCertificates(tc.local, tc.hs, "east", want, now.Add(time.Hour), warn); again != v {
				t.Errorf("the verdict changed an hour later without any change: %+v", again)
			}
		})
	}
}

// writeIdentity (re)writes an identity directory for cluster, issued by
// `by`, trusting the bundle.
func writeIdentity(t *testing.T, dir string, by *certs.Anchor, cluster string, validity time.Duration, bundle ...*certs.Anchor) *x509.Certificate {
	t.Helper()
	crt, key, err := by.Issue(cluster, validity)
	if err != nil {
		t.Fatal(err)
	}
	var b []byte
	for _, a := range bundle {
		b = append(b, a.CertPEM()...)
	}
	if err := certs.WriteIdentity(dir, crt, key, b); err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(crt)
	c, _ := x509.ParseCertificate(block.Bytes)
	return c
}

// startGateway runs a real gateway for east on addr until the returned
// stop is called.
func startGateway(t *testing.T, east *testenv.Cluster, identityDir, addr string) (stop func()) {
	t.Helper()
	g, err := gateway.New(east.Config, gateway.Options{
		ClusterName: "east", IdentityDir: identityDir, InboundAddress: addr,
		AdminAddress: "127.0.0.1:0", OutboundBindIP: "127.0.0.1", DrainTimeout: 100 * time.Millisecond,
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = g.Run(ctx) }()
	deadline := time.Now().Add(30 * time.Second)
	for g.InboundAddr() == nil {
		if time.Now().After(deadline) {
			t.Fatal("the gateway did not listen within 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	t.Cleanup(stop)
	return stop
}

// TestLinkStatusShowsCertificates runs west's link probe — the connection
// pool and the handshake the controller uses, with west's identity —
// against east's real gateway, and reads the Link's status from a real API
// server while east's identity changes: one expiring in 20 days is
// Expiring with its date; one from a foreign anchor is UnknownAuthority
// while the pooled connection still carries traffic; an expired one is
// Expired, and the failing probe itself names the expiry.
func TestLinkStatusShowsCertificates(t *testing.T) {
	clusters := testenv.Start(t, "east", "west")
	east, west := clusters["east"], clusters["west"]
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	anchor, foreign := newAnchor(t), newAnchor(t)
	westDir, eastDir := filepath.Join(t.TempDir(), "west"), filepath.Join(t.TempDir(), "east")
	westCert := writeIdentity(t, westDir, anchor, "west", 365*24*time.Hour, anchor)
	eastCert := writeIdentity(t, eastDir, anchor, "east", 20*24*time.Hour, anchor)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	stopEast := startGateway(t, east, eastDir, addr)

	id, err := identity.Load(westDir)
	if err != nil {
		t.Fatal(err)
	}
	pool := gateway.NewPool(id, 2*time.Second, slog.New(slog.DiscardHandler), nil)
	defer pool.Close()
	host, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	link := &v1alpha1.Link{
		ObjectMeta: metav1.ObjectMeta{Name: "east", Namespace: v1alpha1.SystemNamespace},
		Spec: v1alpha1.LinkSpec{
			TargetClusterName: "east",
			CredentialsSecret: v1alpha1.SecretReference{Name: "link-east"},
			GatewayAddresses:  []v1alpha1.GatewayAddress{{Host: host, Port: int32(p)}},
			GatewayIdentity:   "spiffe://" + testDomain + "/cluster/east",
			Probe: v1alpha1.ProbeSpec{
				Period:           &metav1.Duration{Duration: 100 * time.Millisecond},
				Timeout:          &metav1.Duration{Duration: time.Second},
				FailureThreshold: ptr.To[int32](2),
			},
		},
	}
	if err := west.Client.Create(ctx, link); err != nil {
		t.Fatal(err)
	}
	r := &Runner{
		Client: west.Client, Namespace: v1alpha1.SystemNamespace, Cluster: "west",
		Metrics: NewMetrics(prometheus.NewRegistry()), Resync: 100 * time.Millisecond,
		Probe: func(ctx context.Context, link *v1alpha1.Link) (time.Duration, error) {
			pool.Ensure(*link)
			return pool.Probe(ctx, link.Spec.TargetClusterName)
		},
		Inspect: Handshake(id), InspectPeriod: 200 * time.Millisecond,
	}
	go func() { _ = r.Start(ctx) }()

	waitFor := func(what string, ok func(*v1alpha1.Link, *metav1.Condition) bool) *v1alpha1.Link {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			got := &v1alpha1.Link{}
			if err := west.Client.Get(ctx, client.ObjectKeyFromObject(link), got); err != nil {
				t.Fatal(err)
			}
			c := meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionCertificatesValid)
			if c != nil && ok(got, c) {
				return got
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting until %s; status: %+v", what, got.Status)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	got := waitFor("east's 20-day identity is Expiring", func(l *v1alpha1.Link, c *metav1.Condition) bool {
		return c.Reason == ReasonCertificateExpiring && l.Status.Probe != nil && l.Status.Probe.Alive
	})
	c := meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionCertificatesValid)
	if c.Status != metav1.ConditionTrue || !strings.Contains(c.Message, "east's gateway identity expires at "+stamp(eastCert.NotAfter)) {
		t.Errorf("CertificatesValid = %+v", c)
	}
	certsSeen := got.Status.Certificates
	switch {
	case certsSeen == nil || certsSeen.Peer == nil || certsSeen.Local == nil:
		t.Fatalf("status.certificates = %+v", certsSeen)
	case !certsSeen.Peer.NotAfter.Time.Equal(eastCert.NotAfter.Truncate(time.Second)) || certsSeen.Peer.Identity != link.Spec.GatewayIdentity:
		t.Errorf("peer certificate %+v, want east's expiring %s", certsSeen.Peer, eastCert.NotAfter)
	case !certsSeen.Local.NotAfter.Time.Equal(westCert.NotAfter.Truncate(time.Second)):
		t.Errorf("local certificate %+v, want west's expiring %s", certsSeen.Local, westCert.NotAfter)
	case certsSeen.LastHandshakeTime == nil:
		t.Error("no lastHandshakeTime")
	}

	// A foreign anchor: new connections would fail, the pooled one still
	// works. The gateway reloads its identity within 2s.
	writeIdentity(t, eastDir, foreign, "east", 365*24*time.Hour, anchor, foreign)
	got = waitFor("east's foreign certificate is UnknownAuthority", func(l *v1alpha1.Link, c *metav1.Condition) bool {
		return c.Reason == ReasonUnknownAuthority
	})
	c = meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionCertificatesValid)
	if c.Status != metav1.ConditionFalse || !strings.Contains(c.Message, "do not share a trust anchor") {
		t.Errorf("CertificatesValid = %+v", c)
	}
	if !meta.IsStatusConditionTrue(got.Status.Conditions, v1alpha1.ConditionGatewayReachable) {
		t.Errorf("the pooled connection should still answer probes: %+v", got.Status.Conditions)
	}

	// An expired identity, and a restarted gateway: the pool must dial
	// again, and fails.
	expired := writeIdentity(t, eastDir, anchor, "east", -time.Minute, anchor)
	stopEast()
	startGateway(t, east, eastDir, addr)
	got = waitFor("east's expired identity is Expired and the link dead", func(l *v1alpha1.Link, c *metav1.Condition) bool {
		return c.Reason == ReasonCertificateExpired && l.Status.Probe != nil && !l.Status.Probe.Alive
	})
	c = meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionCertificatesValid)
	if c.Status != metav1.ConditionFalse || !strings.Contains(c.Message, "expired at "+stamp(expired.NotAfter)) {
		t.Errorf("CertificatesValid = %+v", c)
	}
	reach := meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionGatewayReachable)
	if reach == nil || reach.Status != metav1.ConditionFalse || !strings.Contains(reach.Message, "east's gateway identity expired at "+stamp(expired.NotAfter)) {
		t.Errorf("GatewayReachable should say the certificate expired: %+v", reach)
	}
	if got.Status.Certificates.Peer == nil || !got.Status.Certificates.Peer.NotAfter.Time.Equal(expired.NotAfter.Truncate(time.Second)) {
		t.Errorf("peer certificate %+v, want the expired one", got.Status.Certificates.Peer)
	}
}
