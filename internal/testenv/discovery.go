package testenv

import (
	"bytes"
	"crypto/tls"
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
//
// The proxy ends the client's TLS, and with it any client certificate, so
// it carries the client's identity on itself: a request that presented
// c's admin certificate (ThroughProxy) reaches the API server with c's
// admin credentials, any other with only the credentials in its headers
// (a link's bearer token) and so as that identity, never as the admin.
// Only fail makes requests through it fail.
func DiscoveryProxy(t testing.TB, c *Cluster, fail *atomic.Int32) *httptest.Server {
	t.Helper()
	target, err := url.Parse(c.Config.Host)
	if err != nil {
		t.Fatal(err)
	}
	asAdmin, err := rest.TransportFor(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	asItself, err := rest.TransportFor(rest.AnonymousClientConfig(c.Config))
	if err != nil {
		t.Fatal(err)
	}
	var adminCert []byte // DER; empty when the admin is not known by a certificate
	if block, _ := pem.Decode(c.Config.CertData); block != nil {
		adminCert = block.Bytes
	}
	proxyAs := func(transport http.RoundTripper) *httputil.ReverseProxy {
		return &httputil.ReverseProxy{
			Rewrite:       func(r *httputil.ProxyRequest) { r.SetURL(target) },
			Transport:     transport,
			FlushInterval: -1,
		}
	}
	admin, other := proxyAs(asAdmin), proxyAs(asItself)
	gv := "/apis/" + mcsv1beta1.GroupVersion.String()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if code := int(fail.Load()); code != 0 && r.URL.Path == gv {
			http.Error(w, "discovery: "+http.StatusText(code), code)
			return
		}
		// The TLS handshake proved the client holds the certificate's key.
		if peers := r.TLS.PeerCertificates; len(adminCert) > 0 && len(peers) > 0 && bytes.Equal(peers[0].Raw, adminCert) {
			admin.ServeHTTP(w, r)
			return
		}
		other.ServeHTTP(w, r)
	}))
	srv.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// ProxyCA is the PEM of a test server's certificate, which signs itself.
func ProxyCA(srv *httptest.Server) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
}

// ThroughProxy is c's admin rest.Config pointed at the proxy srv. Through
// a DiscoveryProxy of c its requests reach the API server as the admin.
func (c *Cluster) ThroughProxy(srv *httptest.Server) *rest.Config {
	cfg := rest.CopyConfig(c.Config)
	cfg.Host = srv.URL
	cfg.CAData = ProxyCA(srv)
	return cfg
}
