package certmanager

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/cert-manager/cert-manager/pkg/util/pki"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/backbone-mesh/backbone/internal/certs"
	"github.com/backbone-mesh/backbone/internal/identity"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

const (
	manifest       = "gateway-identity.yaml"
	bundleManifest = "trust-bundle.yaml"
	// The placeholders the example uses.
	exampleURI = "spiffe://bank.example/cluster/east"
	// trustManager is the trust-manager release whose CRDs trust-bundle.yaml
	// is checked against.
	trustManager = "github.com/cert-manager/trust-manager@v0.25.0"
)

// documents are the YAML documents of a manifest.
func documents(t *testing.T, manifest string) [][]byte {
	t.Helper()
	data, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatalf("%s: %v", manifest, err)
		}
		if len(bytes.TrimSpace(doc)) > 0 {
			docs = append(docs, doc)
		}
	}
}

// certificate is the example's Certificate, for the given cluster.
func certificate(t *testing.T, cluster string) *cmapi.Certificate {
	t.Helper()
	for _, doc := range documents(t, manifest) {
		crt := &cmapi.Certificate{}
		if err := yaml.UnmarshalStrict(doc, crt); err != nil || crt.Kind != "Certificate" {
			continue
		}
		if len(crt.Spec.URIs) != 1 || crt.Spec.URIs[0] != exampleURI {
			t.Fatalf("%s: the Certificate's uris must be exactly [%s], got %v", manifest, exampleURI, crt.Spec.URIs)
		}
		crt.Spec.URIs = []string{"spiffe://bank.example/cluster/" + cluster}
		return crt
	}
	t.Fatalf("%s holds no Certificate", manifest)
	return nil
}

// issue does what cert-manager does for the Certificate with a CA Issuer
// whose Secret holds caChain (the issuing CA first) and caKey: it makes the
// private key and CSR the Certificate asks for, turns the request into a
// template as the CertificateRequest controller does, and signs it as the
// CA issuer does. It returns the Secret's tls.crt, tls.key and ca.crt.
func issue(t *testing.T, crt *cmapi.Certificate, caChain, caKey []byte) (tlsCrt, tlsKey, caCrt []byte) {
	t.Helper()
	key, err := pki.GeneratePrivateKeyForCertificate(crt)
	if err != nil {
		t.Fatal(err)
	}
	csrTemplate, err := pki.GenerateCSR(crt)
	if err != nil {
		t.Fatal(err)
	}
	csrDER, err := pki.EncodeCSR(csrTemplate, key)
	if err != nil {
		t.Fatal(err)
	}
	cr := &cmapi.CertificateRequest{Spec: cmapi.CertificateRequestSpec{
		Request:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER}),
		Duration: crt.Spec.Duration,
		Usages:   crt.Spec.Usages,
		IsCA:     crt.Spec.IsCA,
	}}
	template, err := pki.CertificateTemplateFromCertificateRequest(cr)
	if err != nil {
		t.Fatal(err)
	}
	caCerts, err := pki.DecodeX509CertificateChainBytes(caChain)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := pki.DecodePrivateKeyBytes(caKey)
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := pki.SignCSRTemplate(caCerts, signer, template)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := pki.EncodePrivateKey(key, crt.Spec.PrivateKey.Encoding)
	if err != nil {
		t.Fatal(err)
	}
	return bundle.ChainPEM, keyPEM, bundle.CAPEM
}

// handshake runs one mTLS handshake between two gateway identities the way
// the gateways do (server: the inbound side; client: the outbound side
// expecting want) and returns the identity the server saw.
func handshake(t *testing.T, server, client *identity.Files, want identity.ID) (identity.ID, error) {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", server.ServerTLS("h2"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	type result struct {
		id  identity.ID
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer func() { _ = c.Close() }()
		tc := c.(*tls.Conn)
		_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
		if err := tc.Handshake(); err != nil {
			done <- result{err: err}
			return
		}
		id, err := identity.PeerID(tc.ConnectionState())
		_, _ = tc.Write([]byte("x")) // the client's handshake completes with our first write
		done <- result{id, err}
	}()
	d := &net.Dialer{Timeout: 10 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", l.Addr().String(), client.ClientTLS(want, "h2"))
	if err != nil {
		return identity.ID{}, err
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != nil {
		return identity.ID{}, err
	}
	r := <-done
	return r.id, r.err
}

func TestCertManagerIdentitiesServeTheGateways(t *testing.T) {
	anchor, err := certs.NewAnchor("bank.example", 10*365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// Each cluster's CA issuer Secret: an issuing CA per cluster (the
	// anchor's key offline), or the anchor itself.
	issuers := map[string]func(cluster string) (chain, key []byte){
		"an issuing CA per cluster": func(cluster string) ([]byte, []byte) {
			chain, key, err := anchor.IssueCA(cluster, 365*24*time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			return chain, key
		},
		"the trust anchor": func(string) ([]byte, []byte) {
			dir := t.TempDir()
			if err := anchor.Save(dir); err != nil {
				t.Fatal(err)
			}
			key, err := os.ReadFile(filepath.Join(dir, certs.AnchorKeyFile))
			if err != nil {
				t.Fatal(err)
			}
			return anchor.CertPEM(), key
		},
	}
	for name, ca := range issuers {
		t.Run(name, func(t *testing.T) {
			files := map[string]*identity.Files{}
			for _, cluster := range []string{"east", "west"} {
				chain, key := ca(cluster)
				tlsCrt, tlsKey, caCrt := issue(t, certificate(t, cluster), chain, key)
				if !bytes.Equal(bytes.TrimSpace(caCrt), bytes.TrimSpace(anchor.CertPEM())) {
					t.Fatalf("%s: ca.crt is not the trust anchor:\n%s", cluster, caCrt)
				}
				dir := t.TempDir()
				if err := certs.WriteIdentity(dir, tlsCrt, tlsKey, caCrt); err != nil {
					t.Fatal(err)
				}
				f, err := identity.Load(dir)
				if err != nil {
					t.Fatalf("%s: the gateway refuses the identity cert-manager wrote: %v", cluster, err)
				}
				if got := f.ID().String(); got != "spiffe://bank.example/cluster/"+cluster {
					t.Fatalf("%s: identity %s", cluster, got)
				}
				if left := time.Until(f.Leaf().NotAfter); left < 89*24*time.Hour || left > 91*24*time.Hour {
					t.Errorf("%s: valid for %s, want the example's 90 days", cluster, left.Round(time.Hour))
				}
				files[cluster] = f
			}
			for _, pair := range [][2]string{{"east", "west"}, {"west", "east"}} {
				server, client := pair[0], pair[1]
				got, err := handshake(t, files[server], files[client], files[server].ID())
				if err != nil {
					t.Fatalf("%s calling %s: %v", client, server, err)
				}
				if got != files[client].ID() {
					t.Fatalf("%s saw %s calling, want %s", server, got, files[client].ID())
				}
			}
			// The client checks whom it reached: west expecting east
			// refuses a server proving west.
			if _, err := handshake(t, files["west"], files["west"], files["east"].ID()); err == nil {
				t.Fatal("a client expecting east accepted a server proving west")
			}
		})
	}
}

// certManagerCRDs is the directory of the CRDs of the cert-manager version
// go.mod pins.
func certManagerCRDs(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/cert-manager/cert-manager").Output()
	if err != nil {
		t.Fatalf("locating the cert-manager module: %v", err)
	}
	return filepath.Join(strings.TrimSpace(string(out)), "deploy", "crds")
}

// trustManagerCRDs are the CRDs of the trust-manager release named above,
// fetched through the module proxy (checksummed like any module).
func trustManagerCRDs(t *testing.T) string {
	t.Helper()
	cmd := exec.Command("go", "mod", "download", "-json", trustManager)
	cmd.Dir = t.TempDir() // outside any module
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go mod download %s: %v", trustManager, err)
	}
	var mod struct{ Dir string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		t.Fatalf("go mod download %s: %v (%s)", trustManager, err, out)
	}
	return filepath.Join(mod.Dir, "deploy", "crds", "trust.cert-manager.io_bundles.yaml")
}

func TestManifestsApplyToARealAPIServer(t *testing.T) {
	testenv.RequireBinaries(t)
	c := testenv.StartWith(t, testenv.Options{CRDPaths: []string{certManagerCRDs(t), trustManagerCRDs(t)}}, "east")["east"]
	ctx := context.Background()
	apply := func(doc []byte) (*unstructured.Unstructured, error) {
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(doc, &u.Object); err != nil {
			t.Fatal(err)
		}
		if err := c.Client.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner("platform-team"), client.ForceOwnership); err != nil {
			return nil, err
		}
		return u, nil
	}
	versions := map[string]string{}
	for round := range 2 {
		for _, file := range []string{manifest, bundleManifest} {
			for _, doc := range documents(t, file) {
				u, err := apply(doc)
				if err != nil {
					t.Fatalf("%s does not apply: %v", file, err)
				}
				key := u.GetKind() + "/" + u.GetName()
				if u.GetResourceVersion() == "" {
					t.Fatalf("%s: applied, but no resourceVersion came back", key)
				}
				if round == 0 {
					versions[key] = u.GetResourceVersion()
				} else if versions[key] != u.GetResourceVersion() {
					t.Errorf("%s changed when applied a second time", key)
				}
			}
		}
	}
	if len(versions) != 3 {
		t.Fatalf("applied %v, want an Issuer, a Certificate and a Bundle", versions)
	}
	// The API server validates what it was given: broken variants of the
	// same objects are refused, so the successes above mean something.
	broken := map[string][2]string{
		manifest:       {"algorithm: ECDSA", "algorithm: DSA"},
		bundleManifest: {"      key: ca.crt\n", "      keys: ca.crt\n"},
	}
	for file, edit := range broken {
		docs := documents(t, file)
		doc := docs[len(docs)-1]
		bad := bytes.Replace(doc, []byte(edit[0]), []byte(edit[1]), 1)
		if bytes.Equal(bad, doc) {
			t.Fatalf("%s no longer contains %q", file, edit[0])
		}
		if _, err := apply(bad); err == nil {
			t.Errorf("%s with %q instead of %q was accepted: the CRD's schema is not being checked", file, edit[1], edit[0])
		}
	}
}
