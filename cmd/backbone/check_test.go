package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	backbonev1alpha1 "github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/certs"
	"github.com/backbone-mesh/backbone/internal/check"
	"github.com/backbone-mesh/backbone/internal/install"
	"github.com/backbone-mesh/backbone/internal/link"
	"github.com/backbone-mesh/backbone/internal/probe"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

// markRunning reports what kubelets and a cloud would: Deployments ready,
// a load balancer address on the gateway Service (envtest runs neither).
func markRunning(t *testing.T, c *testenv.Cluster) {
	t.Helper()
	ctx := context.Background()
	for _, name := range []string{install.ControllerName, install.GatewayName} {
		var d appsv1.Deployment
		if err := c.Client.Get(ctx, client.ObjectKey{Namespace: backbonev1alpha1.SystemNamespace, Name: name}, &d); err != nil {
			t.Fatal(err)
		}
		// A finished rollout, as kubectl rollout status judges one.
		n := *d.Spec.Replicas
		d.Status.Replicas, d.Status.UpdatedReplicas, d.Status.ReadyReplicas, d.Status.AvailableReplicas = n, n, n, n
		d.Status.ObservedGeneration = d.Generation
		if err := c.Client.Status().Update(ctx, &d); err != nil {
			t.Fatal(err)
		}
	}
	var gw corev1.Service
	if err := c.Client.Get(ctx, client.ObjectKey{Namespace: backbonev1alpha1.SystemNamespace, Name: backbonev1alpha1.GatewayServiceName}, &gw); err != nil {
		t.Fatal(err)
	}
	gw.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "203.0.113.20"}}
	if err := c.Client.Status().Update(ctx, &gw); err != nil {
		t.Fatal(err)
	}
}

func createMirror(t *testing.T, c *testenv.Cluster, ns, name, from string, withEndpoint bool) {
	t.Helper()
	ctx := context.Background()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{
			backbonev1alpha1.MirroredFromLabel: from, backbonev1alpha1.ManagedByLabel: backbonev1alpha1.ManagedByValue,
		}},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}
	if err := c.Client.Create(ctx, svc); err != nil {
		t.Fatal(err)
	}
	if !withEndpoint {
		return
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-1", Labels: map[string]string{
			discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: backbonev1alpha1.EndpointSliceManagedBy,
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.0.0.5"}, Conditions: discoveryv1.EndpointConditions{Ready: new(true)}}},
		Ports:       []discoveryv1.EndpointPort{{Name: new("http"), Port: new(int32(40001))}},
	}
	if err := c.Client.Create(ctx, slice); err != nil {
		t.Fatal(err)
	}
}

// addLink stores a Link to east whose kubeconfig carries the given token.
func addLink(t *testing.T, west, east *testenv.Cluster, name, token string) {
	t.Helper()
	kc, err := link.Kubeconfig(name, east.Config.Host, east.Config.CAData, token)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ns := backbonev1alpha1.SystemNamespace
	if err := west.Client.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: link.SecretName(name)},
		Type:       backbonev1alpha1.RemoteKubeconfigSecretType,
		Data:       map[string][]byte{backbonev1alpha1.KubeconfigKey: kc},
	}); err != nil {
		t.Fatal(err)
	}
	if err := west.Client.Create(ctx, &backbonev1alpha1.Link{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: backbonev1alpha1.LinkSpec{
			TargetClusterName: name,
			CredentialsSecret: backbonev1alpha1.SecretReference{Name: link.SecretName(name)},
			GatewayAddresses:  []backbonev1alpha1.GatewayAddress{{Host: "gw." + name + ".example", Port: 4143}},
			GatewayIdentity:   "spiffe://backbone.local/cluster/" + name,
		},
	}); err != nil {
		t.Fatal(err)
	}
}

// unsignedJWT has only the exp claim; check reads it without verifying.
func unsignedJWT(exp time.Time) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"none"}`)) + "." + enc(fmt.Appendf(nil, `{"exp":%d}`, exp.Unix())) + ".c2ln"
}

// TestCheckNamesEachProblem runs backbone check on west, linked to east:
// all well first, then with one of each problem, each of which must be
// named, with a fix, and make the command fail.
// setProbe writes what the controller's link probe would.
func setProbe(t *testing.T, c *testenv.Cluster, link string, alive bool) {
	t.Helper()
	p := map[string]any{"alive": alive, "lastProbeTime": time.Now().UTC().Format(time.RFC3339)}
	status := metav1.ConditionTrue
	if alive {
		p["latencyP50"] = "12ms"
	} else {
		p["consecutiveFailures"] = 3
		status = metav1.ConditionFalse
	}
	patch, _ := json.Marshal(map[string]any{"status": map[string]any{"probe": p, "conditions": []any{map[string]any{
		"type": backbonev1alpha1.ConditionGatewayReachable, "status": string(status), "reason": "Probe", "message": "probe",
		"lastTransitionTime": time.Now().UTC().Format(time.RFC3339)}}}})
	l := &backbonev1alpha1.Link{ObjectMeta: metav1.ObjectMeta{Namespace: backbonev1alpha1.SystemNamespace, Name: link}}
	if err := c.Client.Status().Patch(context.Background(), l, client.RawPatch(types.MergePatchType, patch)); err != nil {
		t.Fatal(err)
	}
}

// identitySecret stores a gateway identity that expires after validity.
func identitySecret(t *testing.T, c *testenv.Cluster, validity time.Duration) {
	t.Helper()
	anchor, err := certs.NewAnchor("backbone.local", 24*time.Hour*365)
	if err != nil {
		t.Fatal(err)
	}
	identitySecretFrom(t, c, anchor, validity)
}

// identitySecretFrom stores (or replaces) a gateway identity issued by the
// anchor, which is also its whole trust bundle.
func identitySecretFrom(t *testing.T, c *testenv.Cluster, anchor *certs.Anchor, validity time.Duration) {
	t.Helper()
	crt, key, err := anchor.Issue(c.Name, validity)
	if err != nil {
		t.Fatal(err)
	}
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: backbonev1alpha1.SystemNamespace, Name: check.IdentitySecret},
		Type: corev1.SecretTypeTLS, Data: map[string][]byte{corev1.TLSCertKey: crt, corev1.TLSPrivateKeyKey: key, "ca.crt": anchor.CertPEM()}}
	ctx := context.Background()
	if err := c.Client.Delete(ctx, s); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	if err := c.Client.Create(ctx, s); err != nil {
		t.Fatal(err)
	}
}

// setCertificates writes what the link probe's handshake would: the
// CertificatesValid condition beside the others, and the peer's expiry.
func setCertificates(t *testing.T, c *testenv.Cluster, link string, status metav1.ConditionStatus, reason, message string, peerNotAfter time.Time) {
	t.Helper()
	ctx := context.Background()
	l := &backbonev1alpha1.Link{}
	if err := c.Client.Get(ctx, client.ObjectKey{Namespace: backbonev1alpha1.SystemNamespace, Name: link}, l); err != nil {
		t.Fatal(err)
	}
	meta.SetStatusCondition(&l.Status.Conditions, metav1.Condition{Type: backbonev1alpha1.ConditionCertificatesValid, Status: status, Reason: reason, Message: message})
	l.Status.Certificates = &backbonev1alpha1.LinkCertificatesStatus{
		Local: &backbonev1alpha1.CertificateInfo{NotBefore: metav1.Now(), NotAfter: metav1.NewTime(time.Now().Add(300 * 24 * time.Hour))},
		Peer:  &backbonev1alpha1.CertificateInfo{NotBefore: metav1.Now(), NotAfter: metav1.NewTime(peerNotAfter)},
	}
	if err := c.Client.Status().Update(ctx, l); err != nil {
		t.Fatal(err)
	}
}

func TestCheckNamesEachProblem(t *testing.T) {
	ctx := context.Background()
	clusters := testenv.Start(t, "east", "west")
	east, west := clusters["east"], clusters["west"]
	installBackbone(t, east)
	installBackbone(t, west)
	markRunning(t, east)
	markRunning(t, west)

	out, stderr, err := run(t, "--kubeconfig", east.Kubeconfig, "link", "--cluster-name", "east", "--create-token")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	for _, d := range decodeDocs(t, out) {
		if err := west.Client.Create(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if err := west.CreateNamespace("payments"); err != nil {
		t.Fatal(err)
	}
	createMirror(t, west, "payments", "api-east", "east", true)
	setProbe(t, west, "east", true)
	setCertificates(t, west, "east", metav1.ConditionTrue, probe.ReasonCertificatesValid, "valid", time.Now().Add(300*24*time.Hour))

	out, _, err = run(t, "--kubeconfig", west.Kubeconfig, "check")
	if err != nil {
		t.Fatalf("check on a healthy cluster failed: %v\n%s", err, out)
	}

	addLink(t, west, east, "north", unsignedJWT(time.Now().Add(10*24*time.Hour)))
	addLink(t, west, east, "south", "not-a-token")
	setProbe(t, west, "north", true)
	setProbe(t, west, "south", false)
	setCertificates(t, west, "north", metav1.ConditionTrue, probe.ReasonCertificatesValid, "valid", time.Now().Add(10*24*time.Hour))
	setCertificates(t, west, "east", metav1.ConditionFalse, probe.ReasonUnknownAuthority, "east's gateway certificate, issued by CN=other, does not chain to this cluster's trust bundle", time.Now().Add(300*24*time.Hour))
	identitySecret(t, west, 5*24*time.Hour)
	createMirror(t, west, "payments", "cache-east", "east", false)
	createMirror(t, west, "payments", "db-gone", "gone", true)
	crd := &unstructured.Unstructured{}
	crd.SetGroupVersionKind(apiextensionsv1.SchemeGroupVersion.WithKind("CustomResourceDefinition"))
	crd.SetName("egresstargets.backbone.dev")
	if err := west.Client.Delete(ctx, crd); err != nil {
		t.Fatal(err)
	}
	// Deletion waits for the API server's clean-up finalizer.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if err := west.Client.Get(ctx, client.ObjectKeyFromObject(crd), crd); apierrors.IsNotFound(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the CRD was not deleted within 30s")
		}
	}

	out, _, err = run(t, "--kubeconfig", west.Kubeconfig, "check", "-o", "json")
	if err == nil {
		t.Errorf("check must fail:\n%s", out)
	}
	var report check.Report
	if err := json.Unmarshal([]byte(out), &report); err != nil {
		t.Fatalf("-o json: %v\n%s", err, out)
	}
	got := map[string]check.Result{}
	for _, r := range report.Results {
		got[r.Check] = r
	}
	wantFailures := map[string]string{
		"CRD egresstargets.backbone.dev": "missing",
		"link north credentials":         "expires",
		"link south credentials":         "refuses",
		"mirror payments/cache-east":     "no ready endpoints",
		"mirror payments/db-gone":        "orphaned",
		"link south gateway":             "dead",
		"gateway identity certificate":   "expires in",
		"link north certificates":        "north's expires at",
		"link east certificates":         "does not share our trust anchor",
	}
	for name, msg := range wantFailures {
		r, ok := got[name]
		switch {
		case !ok:
			t.Errorf("no result for %q", name)
		case r.OK || !strings.Contains(r.Message, msg) || r.Fix == "":
			t.Errorf("%s: want a failure mentioning %q with a fix, got %+v", name, msg, r)
		}
	}
	for _, name := range []string{"link east credentials", "mirror payments/api-east", "CRD links.backbone.dev", "gateway service"} {
		if r, ok := got[name]; ok && !r.OK {
			t.Errorf("%s should pass: %+v", name, r)
		}
	}
	if report.Failed != len(wantFailures) {
		t.Errorf("%d failures, want %d:\n%s", report.Failed, len(wantFailures), out)
	}
}

// TestCheckComparesTrustAnchors runs backbone check across two contexts:
// linked clusters whose identities come from one anchor pass; when east's
// identity is reissued from another anchor, the pair fails naming both
// sides, with a fix.
func TestCheckComparesTrustAnchors(t *testing.T) {
	clusters := testenv.Start(t, "east", "west")
	east, west := clusters["east"], clusters["west"]
	kubeconfig := testenv.MergedKubeconfig(t, clusters)
	anchor, err := certs.NewAnchor("backbone.local", 24*time.Hour*365)
	if err != nil {
		t.Fatal(err)
	}
	identitySecretFrom(t, east, anchor, 90*24*time.Hour)
	identitySecretFrom(t, west, anchor, 90*24*time.Hour)
	addLink(t, west, east, "east", unsignedJWT(time.Now().Add(300*24*time.Hour)))

	trust := func() check.Result {
		t.Helper()
		out, _, _ := run(t, "--kubeconfig", kubeconfig, "check", "--contexts", "east,west", "-o", "json")
		var report check.Report
		if err := json.Unmarshal([]byte(out), &report); err != nil {
			t.Fatalf("-o json: %v\n%s", err, out)
		}
		clustersSeen := map[string]bool{}
		var pair *check.Result
		for _, r := range report.Results {
			clustersSeen[r.Cluster] = true
			if r.Check == "trust between east and west" {
				pair = &r
			}
		}
		if !clustersSeen["east"] || !clustersSeen["west"] {
			t.Errorf("results do not name both clusters: %v", clustersSeen)
		}
		if pair == nil {
			t.Fatalf("no trust result for east and west:\n%s", out)
		}
		return *pair
	}

	if r := trust(); !r.OK {
		t.Errorf("clusters with one anchor should trust each other: %+v", r)
	}

	other, err := certs.NewAnchor("backbone.local", 24*time.Hour*365)
	if err != nil {
		t.Fatal(err)
	}
	identitySecretFrom(t, east, other, 90*24*time.Hour)
	r := trust()
	for _, want := range []string{"east's identity", "does not chain to west's ca.crt", "west's identity", "does not chain to east's ca.crt", "no shared anchor"} {
		if r.OK || !strings.Contains(r.Message, want) {
			t.Errorf("want a failure mentioning %q, got %+v", want, r)
		}
	}
	if !strings.Contains(r.Fix, "--bundle") {
		t.Errorf("the fix should say how to bundle the anchors: %q", r.Fix)
	}
}
