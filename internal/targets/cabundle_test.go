package targets

import (
	"crypto/x509"
	"testing"
)

// FuzzCheckCABundle: caBundle is any string a user applies; the check
// never panics, and whatever it accepts the gateway can load (origin
// refuses a bundle from which no certificate loads).
func FuzzCheckCABundle(f *testing.F) {
	f.Add("")
	f.Add("not pem at all")
	f.Add("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
	f.Add("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
	f.Fuzz(func(t *testing.T, bundle string) {
		if checkCABundle(bundle) != nil {
			return
		}
		if !x509.NewCertPool().AppendCertsFromPEM([]byte(bundle)) {
			t.Fatalf("accepted a bundle the gateway cannot load: %q", bundle)
		}
	})
}
