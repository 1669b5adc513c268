package testenv

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync/atomic"
	"testing"

	"k8s.io/client-go/rest"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
)

// DiscoveryProxy is an HTTPS reverse proxy in front of c's API server that
// answers the MCS API group's discovery with the status in fail while it
// is not 0, and passes everything else on (watches stream). It is closed
// when the test ends.
func DiscoveryProxy(t testing.TB, c *Cluster, fail *atomic.Int32) *httptest.Server {
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
		FlushInterval: -1,
	}
	gv := "/apis/" + mcsv1beta1.GroupVersion.String()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if code := int(fail.Load()); code != 0 && r.URL.Path == gv {
			http.Error(w, "discovery: "+http.StatusText(code), code)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// ProxyCA is the PEM of a test server's certificate, which signs itself.
func ProxyCA(srv *httptest.Server) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
}

// ThroughProxy is c's admin rest.Config pointed at the proxy srv.
func (c *Cluster) ThroughProxy(srv *httptest.Server) *rest.Config {
	cfg := rest.CopyConfig(c.Config)
	cfg.Host = srv.URL
	cfg.CAData = ProxyCA(srv)
	return cfg
}
