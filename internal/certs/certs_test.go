package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// keyPair parses a tls.crt/tls.key pair into the first certificate and key.
func keyPair(t *testing.T, chainPEM, keyPEM []byte) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	pair, err := tls.X509KeyPair(chainPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return c, pair.PrivateKey.(crypto.Signer)
}

// signWith issues a certificate from issuer, as cert-manager's CA issuer
// would, with the given URI, an identity or (isCA) a CA.
func signWith(t *testing.T, issuer *x509.Certificate, issuerKey crypto.Signer, uri string, isCA bool) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(uri)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "leaf"},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{u},
	}
	if isCA {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, &key.PublicKey, issuerKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

func verify(anchor *Anchor, chainPEM []byte, leaf *x509.Certificate, more ...*x509.Certificate) error {
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(anchor.Cert)
	inter.AppendCertsFromPEM(chainPEM)
	for _, c := range more {
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err
}

func TestIssuingCA(t *testing.T) {
	anchor, err := NewAnchor("bank.example", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	chain, key, err := anchor.IssueCA("east", 365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var blocks []*pem.Block
	for rest := chain; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		blocks = append(blocks, b)
	}
	if len(blocks) != 2 || string(pem.EncodeToMemory(blocks[1])) != string(anchor.CertPEM()) {
		t.Fatalf("tls.crt must be the issuing CA followed by the anchor, got %d certificates", len(blocks))
	}
	ca, _ := x509.ParseCertificate(blocks[0].Bytes)
	if !ca.NotAfter.Equal(anchor.Cert.NotAfter) {
		t.Errorf("issuing CA valid until %s, past the anchor's %s", ca.NotAfter, anchor.Cert.NotAfter)
	}

	caCert, caKey := keyPair(t, chain, key)
	t.Run("its identities verify against the anchor alone", func(t *testing.T) {
		leaf, _ := signWith(t, caCert, caKey, "spiffe://bank.example/cluster/east", false)
		if err := verify(anchor, chain, leaf); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("it cannot sign identities of another trust domain", func(t *testing.T) {
		leaf, _ := signWith(t, caCert, caKey, "spiffe://evil.example/cluster/east", false)
		err := verify(anchor, chain, leaf)
		if err == nil || !strings.Contains(err.Error(), "constraint") {
			t.Fatalf("verified: %v", err)
		}
	})
	t.Run("it cannot sign further CAs", func(t *testing.T) {
		sub, subKey := signWith(t, caCert, caKey, "spiffe://bank.example/ca/sub", true)
		leaf, _ := signWith(t, sub, subKey, "spiffe://bank.example/cluster/west", false)
		if err := verify(anchor, chain, leaf, sub); err == nil {
			t.Fatal("an identity signed by a CA below the issuing CA verified")
		}
	})
	t.Run("the anchor still signs identities itself", func(t *testing.T) {
		certPEM, keyPEM, err := anchor.Issue("west", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		leaf, _ := keyPair(t, certPEM, keyPEM)
		if err := verify(anchor, nil, leaf); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("an anchor's issuing CA is written once", func(t *testing.T) {
		dir := t.TempDir()
		if err := WriteKeyPair(dir, chain, key); err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Stat(filepath.Join(dir, "tls.key")); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("tls.key: %v %v", fi, err)
		}
		if err := WriteKeyPair(dir, chain, key); err == nil {
			t.Fatal("overwrote an existing key")
		}
	})
}
