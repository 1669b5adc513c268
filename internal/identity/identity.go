// Package identity owns backbone's workload identities: SPIFFE IDs of the
// form spiffe://<trust-domain>/cluster/<cluster-name>, carried as the single
// URI SAN of a gateway's X.509 certificate.
package identity

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
)

var (
	trustDomainPattern = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`)
	clusterPattern     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
)

// ID is a gateway identity.
type ID struct {
	TrustDomain string
	Cluster     string
}

// String returns the SPIFFE ID.
func (id ID) String() string {
	return "spiffe://" + id.TrustDomain + "/cluster/" + id.Cluster
}

// URL returns the SPIFFE ID as a URL, for a certificate's URI SANs.
func (id ID) URL() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: id.TrustDomain, Path: "/cluster/" + id.Cluster}
}

// New validates the parts and returns the ID.
func New(trustDomain, cluster string) (ID, error) {
	if len(trustDomain) > 255 || !trustDomainPattern.MatchString(trustDomain) {
		return ID{}, fmt.Errorf("trust domain %q: must be lower-case letters, digits, '-' and '.'", trustDomain)
	}
	if len(cluster) > 63 || !clusterPattern.MatchString(cluster) {
		return ID{}, fmt.Errorf("cluster name %q: must be a DNS label (lower-case letters, digits and '-')", cluster)
	}
	return ID{TrustDomain: trustDomain, Cluster: cluster}, nil
}

// Parse parses "spiffe://<trust-domain>/cluster/<name>".
func Parse(s string) (ID, error) {
	rest, ok := strings.CutPrefix(s, "spiffe://")
	if !ok {
		return ID{}, fmt.Errorf("identity %q: must start with spiffe://", s)
	}
	td, path, ok := strings.Cut(rest, "/")
	if !ok {
		return ID{}, fmt.Errorf("identity %q: no path", s)
	}
	cluster, ok := strings.CutPrefix(path, "cluster/")
	if !ok {
		return ID{}, fmt.Errorf("identity %q: path must be /cluster/<name>", s)
	}
	id, err := New(td, cluster)
	if err != nil {
		return ID{}, fmt.Errorf("identity %q: %w", s, err)
	}
	return id, nil
}

// FromCertificate extracts the identity of a verified peer certificate. It
// insists on exactly one URI SAN, a SPIFFE cluster ID, with no NUL bytes
// anywhere in the SANs.
func FromCertificate(cert *x509.Certificate) (ID, error) {
	if cert == nil {
		return ID{}, errors.New("no certificate")
	}
	if len(cert.URIs) != 1 {
		return ID{}, fmt.Errorf("certificate has %d URI SANs, want exactly one SPIFFE ID", len(cert.URIs))
	}
	for _, name := range cert.DNSNames {
		if strings.ContainsRune(name, 0) {
			return ID{}, errors.New("certificate has a NUL byte in a DNS SAN")
		}
	}
	raw := cert.URIs[0].String()
	if strings.ContainsRune(raw, 0) || strings.Contains(raw, "%00") {
		return ID{}, errors.New("certificate has a NUL byte in its URI SAN")
	}
	return Parse(raw)
}
