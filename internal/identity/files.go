package identity

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// The files of an identity directory, as `backbone certs issue` writes
// them and as a kubernetes.io/tls Secret (cert-manager's) mounts them.
const (
	CertFile   = "tls.crt"
	KeyFile    = "tls.key"
	BundleFile = "ca.crt"
)

// Files is a gateway identity loaded from a directory and reloaded when
// the files change (a rotated Secret), without touching connections
// already established: new handshakes use the new certificate and bundle.
type Files struct {
	dir string

	mu      sync.RWMutex
	cert    *tls.Certificate
	leaf    *x509.Certificate
	id      ID
	roots   *x509.CertPool
	stamp   string
	loadErr error
}

// Load reads the identity in dir.
func Load(dir string) (*Files, error) {
	f := &Files{dir: dir}
	if err := f.Reload(); err != nil {
		return nil, err
	}
	return f, nil
}

func (f *Files) fingerprint() string {
	s := ""
	for _, name := range []string{CertFile, KeyFile, BundleFile} {
		if st, err := os.Stat(filepath.Join(f.dir, name)); err == nil {
			s += fmt.Sprintf("%s:%d:%d;", name, st.Size(), st.ModTime().UnixNano())
		}
	}
	return s
}

// Reload reads the files again; on error the previous identity stays.
func (f *Files) Reload() error {
	stamp := f.fingerprint()
	cert, err := tls.LoadX509KeyPair(filepath.Join(f.dir, CertFile), filepath.Join(f.dir, KeyFile))
	if err != nil {
		return f.fail(fmt.Errorf("identity %s: %w", f.dir, err))
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return f.fail(fmt.Errorf("identity %s: %w", f.dir, err))
	}
	id, err := FromCertificate(leaf)
	if err != nil {
		return f.fail(fmt.Errorf("identity %s: %s: %w", f.dir, CertFile, err))
	}
	bundle, err := os.ReadFile(filepath.Join(f.dir, BundleFile))
	if err != nil {
		return f.fail(fmt.Errorf("identity %s: %w", f.dir, err))
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(bundle) {
		return f.fail(fmt.Errorf("identity %s: %s holds no PEM certificate", f.dir, BundleFile))
	}
	cert.Leaf = leaf
	f.mu.Lock()
	f.cert, f.leaf, f.id, f.roots, f.stamp, f.loadErr = &cert, leaf, id, roots, stamp, nil
	f.mu.Unlock()
	return nil
}

func (f *Files) fail(err error) error {
	f.mu.Lock()
	f.loadErr = err
	f.mu.Unlock()
	return err
}

// Watch reloads the identity whenever its files change, until stop closes.
// Polling (every period) sees the atomic symlink swap kubelet does for
// Secret volumes as well as a plain file rewrite.
func (f *Files) Watch(stop <-chan struct{}, period time.Duration, onErr func(error)) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		f.mu.RLock()
		same := f.stamp == f.fingerprint()
		f.mu.RUnlock()
		if same {
			continue
		}
		if err := f.Reload(); err != nil && onErr != nil {
			onErr(err)
		}
	}
}

// ID is this identity.
func (f *Files) ID() ID {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.id
}

// Leaf is the current certificate.
func (f *Files) Leaf() *x509.Certificate {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.leaf
}

// LastError is the error of the latest reload, nil when it succeeded.
func (f *Files) LastError() error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.loadErr
}

func (f *Files) current() (*tls.Certificate, *x509.CertPool, ID) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.cert, f.roots, f.id
}

// verify checks a peer's chain against the current bundle and returns its
// identity, which must be in our trust domain.
func (f *Files) verify(certs []*x509.Certificate, usage x509.ExtKeyUsage) (ID, error) {
	_, roots, self := f.current()
	if len(certs) == 0 {
		return ID{}, errors.New("peer sent no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		return ID{}, fmt.Errorf("peer certificate: %w", err)
	}
	id, err := FromCertificate(certs[0])
	if err != nil {
		return ID{}, fmt.Errorf("peer certificate: %w", err)
	}
	if id.TrustDomain != self.TrustDomain {
		return ID{}, fmt.Errorf("peer %s is outside our trust domain %s", id, self.TrustDomain)
	}
	return id, nil
}

// ServerTLS is the inbound side: TLS 1.3 only, a client certificate
// required and verified against the current bundle, identity in our trust
// domain. Go's own chain verification is replaced (not skipped) so the
// bundle can change at runtime. The check is VerifyConnection's, which
// runs on every handshake: Go calls VerifyPeerCertificate only on full
// ones, and a resumed session would keep admitting a peer whose CA has
// since left the bundle, for as long as its ticket lives (7 days).
func (f *Files) ServerTLS(nextProtos ...string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ClientAuth: tls.RequireAnyClientCert,
		NextProtos: nextProtos,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			c, _, _ := f.current()
			return c, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := f.verify(cs.PeerCertificates, x509.ExtKeyUsageClientAuth)
			return err
		},
	}
}

// ClientTLS is the outbound side: TLS 1.3, our certificate on request,
// and the server must prove exactly the expected identity.
func (f *Files) ClientTLS(expected ID, nextProtos ...string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: nextProtos,
		// The server is authenticated by its SPIFFE ID in
		// VerifyConnection below (every handshake, resumed ones too),
		// against our own bundle, not by a DNS name against the system
		// roots.
		InsecureSkipVerify: true, //nolint:gosec // verification is done in VerifyConnection
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c, _, _ := f.current()
			return c, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			id, err := f.verify(cs.PeerCertificates, x509.ExtKeyUsageServerAuth)
			if err != nil {
				return err
			}
			if id != expected {
				return fmt.Errorf("peer is %s, want %s", id, expected)
			}
			return nil
		},
	}
}

// PeerID returns the verified identity of a TLS connection's peer.
func PeerID(cs tls.ConnectionState) (ID, error) {
	if len(cs.PeerCertificates) == 0 {
		return ID{}, errors.New("no peer certificate")
	}
	return FromCertificate(cs.PeerCertificates[0])
}
