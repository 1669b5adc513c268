package mirror_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/backbone-mesh/backbone/internal/mirror"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

// TestFailedDiscoveryKeepsServiceExportMirrors: whether the remote serves
// ServiceExports decides which of its Services are exported. A discovery
// that fails (a 503 from an API server under load) must not read as "no
// ServiceExports": that would delete every mirror of a Service exported
// by ServiceExport alone. The Link reports the failure, keeps the mirror,
// and syncs when discovery answers again.
func TestFailedDiscoveryKeepsServiceExportMirrors(t *testing.T) {
	east, west := linkedClusters(t, "shop")
	var failDiscovery atomic.Bool
	proxy := discoveryProxy(t, east, &failDiscovery)
	createLink(t, west, "east", linkReaderKubeconfigCA(t, east, proxy.URL, proxyCA(t, proxy)))

	if err := east.Client.Create(bg, service("shop", "payments", nil, 80)); err != nil {
		t.Fatal(err)
	}
	if err := east.Client.Create(bg, &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "payments"}}); err != nil {
		t.Fatal(err)
	}
	stop := runController(t, west)
	eventually(t, "payments-east is mirrored", func() bool { _, ok := get(west, "shop", "payments-east", &corev1.Service{}); return ok })
	eventually(t, "the Link reports Synced", func() bool {
		c := linkReady(west, "east")
		return c != nil && c.Reason == mirror.ReasonSynced
	})
	stop()

	// A restarted controller finds discovery failing.
	failDiscovery.Store(true)
	runController(t, west)
	eventually(t, "the Link reports the failed discovery, or the mirror is gone", func() bool {
		if _, ok := get(west, "shop", "payments-east", &corev1.Service{}); !ok {
			return true
		}
		c := linkReady(west, "east")
		return c != nil && c.Reason != mirror.ReasonSynced && strings.Contains(c.Message, "discovery")
	})
	time.Sleep(3 * time.Second) // two resyncs of the controller under test
	if _, ok := get(west, "shop", "payments-east", &corev1.Service{}); !ok {
		t.Fatal("the mirror of a Service exported by ServiceExport was deleted while discovery failed")
	}
	if c := linkReady(west, "east"); c == nil || c.Reason == mirror.ReasonSynced {
		t.Fatalf("while discovery fails the Link reports %+v, want the failure", c)
	}

	failDiscovery.Store(false)
	eventually(t, "the Link syncs once discovery answers", func() bool {
		c := linkReady(west, "east")
		return c != nil && c.Reason == mirror.ReasonSynced
	})
	if _, ok := get(west, "shop", "payments-east", &corev1.Service{}); !ok {
		t.Fatal("payments-east is gone after discovery recovered")
	}
}

// discoveryProxy is an HTTPS reverse proxy in front of c's API server
// that answers the MCS API group's discovery with 503 while fail is set.
func discoveryProxy(t *testing.T, c *testenv.Cluster, fail *atomic.Bool) *httptest.Server {
	t.Helper()
	target, err := url.Parse(c.Config.Host)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(c.Config.CAData) {
		t.Fatal("the cluster's CA does not parse")
	}
	rp := &httputil.ReverseProxy{
		Rewrite:       func(r *httputil.ProxyRequest) { r.SetURL(target) },
		Transport:     &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
		FlushInterval: -1, // watches stream
	}
	gv := "/apis/" + mcsv1beta1.GroupVersion.String()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fail.Load() && r.URL.Path == gv {
			http.Error(w, "discovery unavailable", http.StatusServiceUnavailable)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// proxyCA is the PEM of the test server's certificate, which signs itself.
func proxyCA(t *testing.T, srv *httptest.Server) []byte {
	t.Helper()
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
}
