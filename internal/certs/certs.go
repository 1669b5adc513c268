// Package certs issues backbone's trust anchors and gateway identities:
// an ECDSA P-256 root per trust domain, and per cluster a certificate whose
// only URI SAN is spiffe://<trust-domain>/cluster/<name>, usable for both
// the server and the client side of the gateways' mTLS. An anchor may
// also sign one level of issuing CAs, one per cluster, so that the anchor's
// key stays offline while cert-manager in each cluster issues identities
// (deploy/cert-manager, docs/identities.md).
package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/backbone-mesh/backbone/internal/identity"
)

// Files in a trust-anchor directory.
const (
	AnchorCertFile = "ca.crt"
	AnchorKeyFile  = "ca.key"
)

// Anchor is a trust anchor: the root that signs gateway identities.
type Anchor struct {
	TrustDomain string
	Cert        *x509.Certificate
	Key         *ecdsa.PrivateKey
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// NewAnchor creates a root for the trust domain, valid for validity.
func NewAnchor(trustDomain string, validity time.Duration) (*Anchor, error) {
	if _, err := identity.New(trustDomain, "x"); err != nil {
		return nil, err
	}
	if err := positive(validity); err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	skid := sha256.Sum256(elliptic.MarshalCompressed(elliptic.P256(), key.X, key.Y))
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: "backbone trust anchor " + trustDomain, Organization: []string{"backbone"}},
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              now.Add(validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		// One level of issuing CAs below the anchor, none below those.
		MaxPathLen:   1,
		KeyUsage:     x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		SubjectKeyId: skid[:20],
		URIs:         []*url.URL{{Scheme: "spiffe", Host: trustDomain}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &Anchor{TrustDomain: trustDomain, Cert: cert, Key: key}, nil
}

// Issue creates the identity of a cluster's gateway, valid for validity,
// capped at the anchor's own expiry (CheckValidity tells beforehand). A
// negative validity, down to the five minutes the certificate is
// backdated, gives one that has already expired, which tests of expiry
// handling need; a validity from a person is checked with CheckValidity.
func (a *Anchor) Issue(cluster string, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	id, err := identity.New(a.TrustDomain, cluster)
	if err != nil {
		return nil, nil, err
	}
	der, keyPEM, err := a.sign(validity, func(tmpl *x509.Certificate, _ *ecdsa.PrivateKey) {
		tmpl.Subject = pkix.Name{CommonName: cluster, Organization: []string{"backbone"}}
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
		tmpl.URIs = []*url.URL{id.URL()}
	})
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, nil
}

// IssueCA creates an issuing CA signed by the anchor, for one cluster's
// cert-manager (or any other CA that should not hold the anchor's key).
// It may sign identities only, not further CAs, and only URIs in the
// anchor's trust domain (a name constraint every verifier enforces). Its
// validity is capped at the anchor's. certPEM holds the issuing CA followed
// by the anchor, the chain a kubernetes.io/tls Secret for cert-manager's CA
// issuer carries, so that the ca.crt cert-manager writes is the anchor.
func (a *Anchor) IssueCA(name string, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	if _, err := identity.New(a.TrustDomain, name); err != nil {
		return nil, nil, err
	}
	if err := positive(validity); err != nil {
		return nil, nil, err
	}
	der, keyPEM, err := a.sign(validity, func(tmpl *x509.Certificate, key *ecdsa.PrivateKey) {
		skid := sha256.Sum256(elliptic.MarshalCompressed(elliptic.P256(), key.X, key.Y))
		tmpl.Subject = pkix.Name{CommonName: "backbone issuing CA " + name, Organization: []string{"backbone"}}
		tmpl.IsCA, tmpl.BasicConstraintsValid, tmpl.MaxPathLenZero = true, true, true
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
		tmpl.SubjectKeyId = skid[:20]
		tmpl.PermittedURIDomains = []string{a.TrustDomain}
	})
	if err != nil {
		return nil, nil, err
	}
	return append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), a.CertPEM()...), keyPEM, nil
}

// sign makes a new P-256 key and a certificate for it signed by the
// anchor, valid from five minutes ago (clock skew) for validity, capped at
// the anchor's expiry; fill sets the rest of the template. An expired
// anchor signs nothing: the cap would make what it signs expired too, or
// end before it begins.
func (a *Anchor) sign(validity time.Duration, fill func(*x509.Certificate, *ecdsa.PrivateKey)) (der, keyPEM []byte, err error) {
	now := time.Now()
	if err := a.usable(now); err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{NotBefore: now.Add(-5 * time.Minute), NotAfter: now.Add(validity)}
	if tmpl.NotAfter.After(a.Cert.NotAfter) {
		tmpl.NotAfter = a.Cert.NotAfter
	}
	if !tmpl.NotAfter.After(tmpl.NotBefore) {
		return nil, nil, fmt.Errorf("validity %s: the certificate expires before it is valid", validity)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	if tmpl.SerialNumber, err = serial(); err != nil {
		return nil, nil, err
	}
	fill(tmpl, key)
	if der, err = x509.CreateCertificate(rand.Reader, tmpl, a.Cert, &key.PublicKey, a.Key); err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return der, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), nil
}

// CertPEM is the anchor's certificate in PEM.
func (a *Anchor) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.Cert.Raw})
}

// Save writes ca.crt and ca.key (0600) into dir.
func (a *Anchor) Save(dir string) error {
	keyDER, err := x509.MarshalECPrivateKey(a.Key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := writeAtomic(filepath.Join(dir, AnchorKeyFile), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	return writeAtomic(filepath.Join(dir, AnchorCertFile), a.CertPEM(), 0o644)
}

// LoadAnchor reads a trust anchor written by Save, refusing one that is
// not valid now.
func LoadAnchor(dir string) (*Anchor, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, AnchorCertFile))
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, AnchorKeyFile))
	if err != nil {
		return nil, err
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, fmt.Errorf("%s: %s or %s is not PEM", dir, AnchorCertFile, AnchorKeyFile)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, AnchorCertFile), err)
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, AnchorKeyFile), err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("%s: not a CA certificate", filepath.Join(dir, AnchorCertFile))
	}
	if len(cert.URIs) != 1 || cert.URIs[0].Scheme != "spiffe" || cert.URIs[0].Host == "" {
		return nil, fmt.Errorf("%s: the anchor names no SPIFFE trust domain", filepath.Join(dir, AnchorCertFile))
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, errors.New(dir + ": key does not match certificate")
	}
	a := &Anchor{TrustDomain: cert.URIs[0].Host, Cert: cert, Key: key}
	if err := a.usable(time.Now()); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, AnchorCertFile), err)
	}
	return a, nil
}

// WriteIdentity writes tls.crt, tls.key and ca.crt (the trust bundle) into
// dir, the layout `backbone gateway --identity-dir` reads.
func WriteIdentity(dir string, certPEM, keyPEM, bundlePEM []byte) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{identity.KeyFile, keyPEM, 0o600},
		{identity.CertFile, certPEM, 0o644},
		{identity.BundleFile, bundlePEM, 0o644},
	} {
		if err := writeAtomic(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}

// WriteKeyPair writes tls.crt and tls.key (0600) into dir, refusing to
// overwrite a key already there.
func WriteKeyPair(dir string, certPEM, keyPEM []byte) error {
	if _, err := os.Stat(filepath.Join(dir, identity.KeyFile)); err == nil {
		return fmt.Errorf("%s already holds %s; refusing to overwrite it", dir, identity.KeyFile)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := writeAtomic(filepath.Join(dir, identity.KeyFile), keyPEM, 0o600); err != nil {
		return err
	}
	return writeAtomic(filepath.Join(dir, identity.CertFile), certPEM, 0o644)
}

func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
