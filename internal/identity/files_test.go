package identity_test

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/backbone-mesh/backbone/internal/certs"
	"github.com/backbone-mesh/backbone/internal/identity"
)

// TestAResumedSessionIsCheckedAgainstTheCurrentBundle: a peer whose CA
// left the bundle (an anchor rotated out, a compromised cluster cut off)
// is refused also when it resumes a TLS session from before: Go checks
// the chain of a resumed session only for its leaf's expiry.
func TestAResumedSessionIsCheckedAgainstTheCurrentBundle(t *testing.T) {
	old, err := certs.NewAnchor("bank.test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	next, err := certs.NewAnchor("bank.test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	write := func(dir, cluster string, a *certs.Anchor, bundle []byte) {
		t.Helper()
		crt, key, err := a.Issue(cluster, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := certs.WriteIdentity(dir, crt, key, bundle); err != nil {
			t.Fatal(err)
		}
	}
	eastDir, westDir := filepath.Join(t.TempDir(), "east"), filepath.Join(t.TempDir(), "west")
	write(eastDir, "east", old, old.CertPEM())
	write(westDir, "west", old, old.CertPEM())
	east, err := identity.Load(eastDir)
	if err != nil {
		t.Fatal(err)
	}
	west, err := identity.Load(westDir)
	if err != nil {
		t.Fatal(err)
	}

	l, err := tls.Listen("tcp", "127.0.0.1:0", east.ServerTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer func() { _ = c.Close() }()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				if c.(*tls.Conn).Handshake() == nil {
					_, _ = c.Write([]byte("k"))
				}
			}()
		}
	}()

	cfg := west.ClientTLS(east.ID())
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	connect := func() (resumed bool, err error) {
		c, err := tls.Dial("tcp", l.Addr().String(), cfg)
		if err != nil {
			return false, err
		}
		defer func() { _ = c.Close() }()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		var b [1]byte
		if _, err := c.Read(b[:]); err != nil { // the server's verdict, and its session ticket
			return false, err
		}
		return c.ConnectionState().DidResume, nil
	}
	if _, err := connect(); err != nil {
		t.Fatal(err)
	}
	if resumed, err := connect(); err != nil || !resumed {
		t.Fatalf("the second connection resumed %v, %v: the test needs a resumed session", resumed, err)
	}

	// east's bundle now holds the next anchor only; its own certificate
	// is still the old anchor's, which west trusts.
	crt, key := readPair(t, eastDir)
	if err := certs.WriteIdentity(eastDir, crt, key, next.CertPEM()); err != nil {
		t.Fatal(err)
	}
	if err := east.Reload(); err != nil {
		t.Fatal(err)
	}
	if resumed, err := connect(); err == nil {
		t.Fatalf("west, whose CA left east's bundle, connected (resumed: %v)", resumed)
	}
}

func readPair(t *testing.T, dir string) (crt, key []byte) {
	t.Helper()
	var err error
	if crt, err = os.ReadFile(filepath.Join(dir, identity.CertFile)); err != nil {
		t.Fatal(err)
	}
	if key, err = os.ReadFile(filepath.Join(dir, identity.KeyFile)); err != nil {
		t.Fatal(err)
	}
	return crt, key
}
