package identity

import (
	"crypto/x509"
	"net/url"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := map[string]struct {
		in      string
		want    ID
		wantErr string
	}{
		"a cluster identity parses": {
			in: "spiffe://backbone.example/cluster/east", want: ID{"backbone.example", "east"},
		},
		"another scheme is refused":             {in: "https://backbone.example/cluster/east", wantErr: "spiffe://"},
		"a workload path is refused":            {in: "spiffe://backbone.example/ns/default/sa/x", wantErr: "/cluster/"},
		"an upper-case cluster is refused":      {in: "spiffe://backbone.example/cluster/East", wantErr: "DNS label"},
		"a nested path is refused":              {in: "spiffe://backbone.example/cluster/east/x", wantErr: "DNS label"},
		"an empty trust domain is refused":      {in: "spiffe:///cluster/east", wantErr: "trust domain"},
		"a port in the trust domain is refused": {in: "spiffe://backbone.example:443/cluster/east", wantErr: "trust domain"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := Parse(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("want error containing %q, got %v", tc.wantErr, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Parse = %+v, %v; want %+v", got, err, tc.want)
			}
			if got.String() != tc.in || got.URL().String() != tc.in {
				t.Errorf("round trip: %s, %s", got.String(), got.URL())
			}
		})
	}
}

func TestFromCertificate(t *testing.T) {
	u := func(s string) *url.URL {
		p, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := map[string]struct {
		cert    *x509.Certificate
		wantErr string
	}{
		"one SPIFFE URI SAN is an identity": {
			cert: &x509.Certificate{URIs: []*url.URL{u("spiffe://td/cluster/west")}},
		},
		"no URI SAN is refused": {
			cert: &x509.Certificate{DNSNames: []string{"west"}}, wantErr: "0 URI SANs",
		},
		"several URI SANs are refused": {
			cert:    &x509.Certificate{URIs: []*url.URL{u("spiffe://td/cluster/west"), u("spiffe://td/cluster/east")}},
			wantErr: "2 URI SANs",
		},
		"a NUL in a DNS SAN is refused": {
			cert:    &x509.Certificate{URIs: []*url.URL{u("spiffe://td/cluster/west")}, DNSNames: []string{"a\x00b"}},
			wantErr: "NUL",
		},
		"a percent-encoded NUL in the URI is refused": {
			cert:    &x509.Certificate{URIs: []*url.URL{{Scheme: "spiffe", Host: "td", Path: "/cluster/we\x00st"}}},
			wantErr: "NUL",
		},
		"no certificate is refused": {wantErr: "no certificate"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := FromCertificate(tc.cert)
			if tc.wantErr == "" && err != nil {
				t.Fatal(err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("want error containing %q, got %v", tc.wantErr, err)
			}
		})
	}
}

// FuzzParse: identities come from peer certificates and Link specs.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"spiffe://td/cluster/a", "spiffe://td/cluster/", "spiffe://a.b-c/cluster/x-1", "spiffe://%00/cluster/a", "spiffe://td/cluster/a/b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := Parse(s)
		if err != nil {
			return
		}
		if again, err := Parse(id.String()); err != nil || again != id {
			t.Fatalf("%q parsed to %+v, which does not round-trip: %+v %v", s, id, again, err)
		}
		if strings.ContainsAny(id.Cluster, "/\x00:") || strings.ContainsAny(id.TrustDomain, "/\x00:@") {
			t.Fatalf("%q parsed to an unsafe identity %+v", s, id)
		}
	})
}
