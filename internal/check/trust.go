package check

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	backbonev1alpha1 "github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/identity"
)

// trustView is one cluster's side of the mTLS path, from its identity
// Secret: its certificate and the anchors it trusts.
type trustView struct {
	context string
	id      identity.ID
	leaf    *x509.Certificate
	inter   *x509.CertPool
	roots   *x509.CertPool
	anchors []string // the roots in ca.crt: common name and fingerprint
	targets []string // clusters it has Links to
}

// Trust compares the trust anchors of clusters read with administrator
// clients, by kubeconfig context: for every pair linked in either
// direction, each cluster's identity must chain to the other's ca.crt, and
// both must be in one trust domain. The linked cluster's Secrets cannot be
// read with a Link's credentials (the link reader may not read Secrets),
// so this needs a context per cluster; with one context, the link probe's
// handshake reports the same problem on the Link. Contexts whose Secrets
// hold one cluster's identity fail, naming them: a Secret copied from
// another cluster, or issued with the wrong --cluster-name.
func Trust(ctx context.Context, clients map[string]client.Client) []Result {
	contexts := make([]string, 0, len(clients))
	for name := range clients {
		contexts = append(contexts, name)
	}
	slices.Sort(contexts)
	var out []Result
	byCluster := map[string]*trustView{}
	// Contexts whose Secrets hold one cluster's identity: keyed by that
	// cluster, one view would hide the other. Which is the real one cannot
	// be told, so neither is compared.
	holders := map[string][]*trustView{}
	for _, name := range contexts {
		v, err := readTrust(ctx, clients[name])
		if err != nil {
			out = append(out, Result{Cluster: name, Check: "trust anchors", Message: err.Error(),
				Fix: fmt.Sprintf("kubectl --context %s -n %s get secret %s", name, backbonev1alpha1.SystemNamespace, IdentitySecret)})
			continue
		}
		if v == nil {
			out = append(out, Result{Cluster: name, Check: "trust anchors", OK: true,
				Message: "no Secret " + IdentitySecret + " (an identity mounted another way): not compared"})
			continue
		}
		v.context = name
		holders[v.id.Cluster] = append(holders[v.id.Cluster], v)
	}
	for _, cluster := range slices.Sorted(maps.Keys(holders)) {
		if vs := holders[cluster]; len(vs) > 1 {
			out = append(out, sharedIdentity(vs))
		} else {
			byCluster[cluster] = vs[0]
		}
	}
	compared := map[[2]string]bool{}
	for _, name := range contexts {
		a := viewOf(byCluster, name)
		if a == nil {
			continue
		}
		for _, target := range a.targets {
			b, ok := byCluster[target]
			pair := [2]string{min(a.id.Cluster, target), max(a.id.Cluster, target)}
			if !ok || b == a || compared[pair] {
				continue
			}
			compared[pair] = true
			out = append(out, comparePair(a, b))
		}
	}
	if len(compared) == 0 && len(byCluster) > 1 {
		out = append(out, pass("trust anchors", "no Links between the clusters checked"))
	}
	return out
}

// sharedIdentity is the failure of contexts (in order) whose Secrets hold
// one cluster's identity.
func sharedIdentity(vs []*trustView) Result {
	var contexts, ids []string
	for _, v := range vs {
		contexts = append(contexts, v.context)
		if id := v.id.String(); !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	cluster := vs[0].id.Cluster
	return fail("identity of "+cluster,
		fmt.Sprintf("contexts %s and %s hold one identity in Secret %s, cluster %s's (%s): peers cannot tell these clusters apart, and their trust anchors are not compared",
			strings.Join(contexts[:len(contexts)-1], ", "), contexts[len(contexts)-1], IdentitySecret, cluster, strings.Join(ids, ", ")),
		fmt.Sprintf("issue each cluster its own identity (backbone certs issue --cluster-name <its name> ...) and replace Secret %s/%s in every context whose cluster is not %s; kubectl --context <context> -n %s get secret %s -o jsonpath='{.data.tls\\.crt}' | base64 -d | openssl x509 -noout -ext subjectAltName shows whose identity a Secret holds",
			backbonev1alpha1.SystemNamespace, IdentitySecret, cluster, backbonev1alpha1.SystemNamespace, IdentitySecret))
}

func viewOf(byCluster map[string]*trustView, context string) *trustView {
	for _, v := range byCluster {
		if v.context == context {
			return v
		}
	}
	return nil
}

// readTrust reads a cluster's identity Secret and Links; nil when the
// Secret does not exist.
func readTrust(ctx context.Context, c client.Client) (*trustView, error) {
	var s corev1.Secret
	err := c.Get(ctx, client.ObjectKey{Namespace: backbonev1alpha1.SystemNamespace, Name: IdentitySecret}, &s)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	certs, err := parseCerts(s.Data[corev1.TLSCertKey])
	if err != nil || len(certs) == 0 {
		return nil, fmt.Errorf("secret %s: tls.crt: no certificate (%v)", IdentitySecret, err)
	}
	roots, err := parseCerts(s.Data[identity.BundleFile])
	if err != nil || len(roots) == 0 {
		return nil, fmt.Errorf("secret %s: %s: no trust anchor (%v)", IdentitySecret, identity.BundleFile, err)
	}
	id, err := identity.FromCertificate(certs[0])
	if err != nil {
		return nil, fmt.Errorf("secret %s: tls.crt: %w", IdentitySecret, err)
	}
	v := &trustView{id: id, leaf: certs[0], inter: x509.NewCertPool(), roots: x509.NewCertPool()}
	for _, c := range certs[1:] {
		v.inter.AddCert(c)
	}
	for _, r := range roots {
		v.roots.AddCert(r)
		sum := sha256.Sum256(r.Raw)
		v.anchors = append(v.anchors, fmt.Sprintf("%s (sha256 %x)", r.Subject.CommonName, sum[:8]))
	}
	var links backbonev1alpha1.LinkList
	if err := c.List(ctx, &links, client.InNamespace(backbonev1alpha1.SystemNamespace)); err != nil {
		return nil, err
	}
	for _, l := range links.Items {
		v.targets = append(v.targets, l.Spec.TargetClusterName)
	}
	return v, nil
}

func parseCerts(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return out, nil
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
}

// trusts says whether `of`'s identity chains to `by`'s anchors. Expiry is
// left out (verification at the middle of the certificate's life): it is
// reported by each cluster's identity check, and here only the anchors
// matter.
func trusts(by, of *trustView, usage x509.ExtKeyUsage) error {
	mid := of.leaf.NotBefore.Add(of.leaf.NotAfter.Sub(of.leaf.NotBefore) / 2)
	_, err := of.leaf.Verify(x509.VerifyOptions{Roots: by.roots, Intermediates: of.inter, CurrentTime: mid, KeyUsages: []x509.ExtKeyUsage{usage}})
	return err
}

// comparePair checks both directions of a link: a dials b (b's identity
// verified against a's bundle) and b verifies a's client certificate.
func comparePair(a, b *trustView) Result {
	first, second := min(a.id.Cluster, b.id.Cluster), max(a.id.Cluster, b.id.Cluster)
	name := fmt.Sprintf("trust between %s and %s", first, second)
	if a.id.TrustDomain != b.id.TrustDomain {
		return fail(name, fmt.Sprintf("%s is in trust domain %s, %s in %s: gateways accept only their own trust domain", a.id.Cluster, a.id.TrustDomain, b.id.Cluster, b.id.TrustDomain),
			"issue both identities in one trust domain (backbone certs issue)")
	}
	var problems []string
	for _, d := range []struct {
		by, of *trustView
		usage  x509.ExtKeyUsage
	}{{a, b, x509.ExtKeyUsageServerAuth}, {b, a, x509.ExtKeyUsageClientAuth}} {
		if err := trusts(d.by, d.of, d.usage); err != nil {
			var unknown x509.UnknownAuthorityError
			why := err.Error()
			if errors.As(err, &unknown) {
				why = "no shared anchor"
			}
			problems = append(problems, fmt.Sprintf("%s's identity (issued by %s) does not chain to %s's ca.crt (anchors: %s): %s",
				d.of.id.Cluster, d.of.leaf.Issuer, d.by.id.Cluster, strings.Join(d.by.anchors, "; "), why))
		}
	}
	if len(problems) > 0 {
		return fail(name, strings.Join(problems, "; "), anchorFix(b.id.Cluster)+fmt.Sprintf(" (contexts %s and %s)", a.context, b.context))
	}
	return pass(name, fmt.Sprintf("each verifies the other's identity (%s trusts %s; %s trusts %s)",
		a.id.Cluster, strings.Join(a.anchors, "; "), b.id.Cluster, strings.Join(b.anchors, "; ")))
}
