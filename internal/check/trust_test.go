package check

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	backbonev1alpha1 "github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/certs"
	"github.com/backbone-mesh/backbone/internal/identity"
)

// clusterWithIdentity is an administrator's client of a cluster whose
// identity Secret holds the identity of `holds`, issued by the anchor, and
// which links to the targets.
func clusterWithIdentity(t *testing.T, anchor *certs.Anchor, holds string, targets ...string) client.Client {
	t.Helper()
	crt, key, err := anchor.Issue(holds, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	s := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(s)
	_ = backbonev1alpha1.AddToScheme(s)
	objs := []client.Object{&corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: backbonev1alpha1.SystemNamespace, Name: IdentitySecret},
		Data:       map[string][]byte{corev1.TLSCertKey: crt, corev1.TLSPrivateKeyKey: key, identity.BundleFile: anchor.CertPEM()},
	}}
	for _, target := range targets {
		objs = append(objs, &backbonev1alpha1.Link{ObjectMeta: metav1.ObjectMeta{Namespace: backbonev1alpha1.SystemNamespace, Name: target},
			Spec: backbonev1alpha1.LinkSpec{TargetClusterName: target}})
	}
	return fake.NewClientBuilder().WithScheme(s).WithObjects(objs...).Build()
}

// TestTwoContextsHoldingOneIdentityFail: when west's Secret holds east's
// certificate (copied by hand, or an issue with the wrong --cluster-name),
// one cluster's view hid the other's and nothing was printed about either;
// the check must fail naming both contexts and the identity.
func TestTwoContextsHoldingOneIdentityFail(t *testing.T) {
	anchor, err := certs.NewAnchor("bank.example", 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	results := Trust(context.Background(), map[string]client.Client{
		"east":  clusterWithIdentity(t, anchor, "east", "west"),
		"west":  clusterWithIdentity(t, anchor, "east", "east"),
		"north": clusterWithIdentity(t, anchor, "north", "east"),
	})
	var found bool
	for _, r := range results {
		if strings.Contains(r.Message, "spiffe://bank.example/cluster/east") {
			found = true
			if r.OK || !strings.Contains(r.Message, "contexts east and west") {
				t.Errorf("want a failure naming contexts east and west: %+v", r)
			}
			if r.Fix == "" {
				t.Errorf("a failure without a fix: %+v", r)
			}
		}
		if r.OK && strings.Contains(r.Check, "east") {
			t.Errorf("east is ambiguous, yet a comparison with it passed: %+v", r)
		}
	}
	if !found {
		t.Fatalf("no result names the identity both contexts hold: %+v", results)
	}
}

// TestDistinctIdentitiesAreCompared guards the test above: clusters with
// their own identities are compared pairwise and pass.
func TestDistinctIdentitiesAreCompared(t *testing.T) {
	anchor, err := certs.NewAnchor("bank.example", 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	results := Trust(context.Background(), map[string]client.Client{
		"east": clusterWithIdentity(t, anchor, "east", "west"),
		"west": clusterWithIdentity(t, anchor, "west", "east"),
	})
	if len(results) != 1 || !results[0].OK || results[0].Check != "trust between east and west" {
		t.Errorf("want one passing comparison of east and west, got %+v", results)
	}
}
