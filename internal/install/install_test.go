package install

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/backbone-mesh/backbone/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

func eastAWS(t *testing.T) Values {
	t.Helper()
	v := DefaultValues()
	v.ClusterName = "east"
	v.TrustDomain = "bank.example"
	v.Cloud = "aws"
	v.Image.Tag = "v0.1.0"
	if err := v.Set([]string{"metrics.serviceMonitor=true", "crds.serviceExport=true"}); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestRenderMatchesGolden pins the exact bytes users commit to git; run
// with -update after an intended change and review the diff.
func TestRenderMatchesGolden(t *testing.T) {
	got, err := Render(eastAWS(t))
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "east-aws.yaml")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Errorf("install output differs from %s (rerun with -update if intended)", golden)
	}
	again, _ := Render(eastAWS(t))
	if string(again) != string(got) {
		t.Error("two renders differ")
	}
}

func TestSet(t *testing.T) {
	tests := map[string]struct {
		set     []string
		check   func(Values) bool
		wantErr bool
	}{
		"an integer value sets an integer field": {
			set: []string{"gateway.replicas=3"}, check: func(v Values) bool { return v.Gateway.Replicas == 3 },
		},
		"a numeric-looking value stays a string where the field is a string": {
			set: []string{"image.tag=1.2"}, check: func(v Values) bool { return v.Image.Tag == "1.2" },
		},
		"escaped dots keep an annotation name whole": {
			set:   []string{`gateway.serviceAnnotations.example\.com/team=net`},
			check: func(v Values) bool { return v.Gateway.ServiceAnnotations["example.com/team"] == "net" },
		},
		"braces make a list": {
			set:   []string{"gateway.loadBalancerSourceRanges={10.0.0.0/8,192.168.0.0/16}"},
			check: func(v Values) bool { return len(v.Gateway.LoadBalancerSourceRanges) == 2 },
		},
		"braces make a list of IP families": {
			set: []string{"gateway.ipFamilies={IPv6,IPv4}"},
			check: func(v Values) bool {
				return len(v.Gateway.IPFamilies) == 2 && v.Gateway.IPFamilies[0] == corev1.IPv6Protocol
			},
		},
		"an unknown key is an error, not ignored": {set: []string{"gatway.replicas=3"}, wantErr: true},
		"a bool field refuses a non-bool":         {set: []string{"crds.install=maybe"}, wantErr: true},
		"an assignment without = is an error":     {set: []string{"gateway.replicas"}, wantErr: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			v := DefaultValues()
			err := v.Set(tc.set)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if err == nil && !tc.check(v) {
				t.Errorf("values after %v: %+v", tc.set, v)
			}
		})
	}
}

func TestValidateRefusesUnusableValues(t *testing.T) {
	ok := eastAWS(t)
	ok.Controller.Ingress.Mode, ok.Controller.Ingress.GatewayRef = "httproute", "gateway-system/public/https"
	if _, err := Objects(ok); err != nil {
		t.Fatalf("httproute on a Gateway: %v", err)
	}
	for name, mutate := range map[string]func(*Values){
		"no cluster name":             func(v *Values) { v.ClusterName = "" },
		"unknown cloud":               func(v *Values) { v.Cloud = "oracle" },
		"zero gateways":               func(v *Values) { v.Gateway.Replicas = 0 },
		"invalid trust domain":        func(v *Values) { v.TrustDomain = "Bank Example" },
		"unknown ingress mode":        func(v *Values) { v.Controller.Ingress.Mode = "nginx" },
		"httproute without a Gateway": func(v *Values) { v.Controller.Ingress.Mode = "httproute" },
		"a Gateway that is not namespace/name": func(v *Values) {
			v.Controller.Ingress.Mode, v.Controller.Ingress.GatewayRef = "httproute", "public"
		},
	} {
		v := eastAWS(t)
		mutate(&v)
		if _, err := Objects(v); err == nil {
			t.Errorf("%s: want an error", name)
		}
	}
}

// TestValidateNamesAnUnparsableQuantity: a resource quantity that is not
// one (a typo, a word) is an error naming its key, from `backbone install
// --set` as from Go, instead of a panic while rendering.
func TestValidateNamesAnUnparsableQuantity(t *testing.T) {
	for _, key := range []string{
		"controller.resources.cpuRequest", "controller.resources.memoryRequest", "controller.resources.memoryLimit",
		"gateway.resources.cpuRequest", "gateway.resources.memoryRequest", "gateway.resources.memoryLimit",
	} {
		for _, value := range []string{"half", "", "-1Gi"} {
			v := eastAWS(t)
			if err := v.Set([]string{key + "=" + value}); err != nil {
				t.Fatal(err)
			}
			err := func() (err error) {
				defer func() {
					if p := recover(); p != nil {
						err = fmt.Errorf("panic: %v", p)
					}
				}()
				_, err = Objects(v)
				return err
			}()
			if err == nil || !strings.Contains(err.Error(), key) || strings.HasPrefix(err.Error(), "panic") {
				t.Errorf("%s=%q: want an error naming %s, got %v", key, value, key, err)
			}
		}
	}
}

// TestValidateRefusesBadIPFamilies: gateway.ipFamilies takes one family or
// two different ones, each IPv4 or IPv6; anything else names the key.
func TestValidateRefusesBadIPFamilies(t *testing.T) {
	for _, set := range []string{"{IPv5}", "{ipv4}", "{IPv4,IPv4}", "{IPv4,IPv6,IPv4}"} {
		v := eastAWS(t)
		if err := v.Set([]string{"gateway.ipFamilies=" + set}); err != nil {
			t.Fatal(err)
		}
		if _, err := Objects(v); err == nil || !strings.Contains(err.Error(), "gateway.ipFamilies") {
			t.Errorf("gateway.ipFamilies=%s: want an error naming gateway.ipFamilies, got %v", set, err)
		}
	}
}

// TestGatewayDisruptionBudgetLetsANodeDrain: the budget keeps a gateway up
// while another is evicted, but never forbids every eviction — with one
// replica, minAvailable: 1 would block `kubectl drain` of its node forever.
func TestGatewayDisruptionBudgetLetsANodeDrain(t *testing.T) {
	tests := map[string]struct {
		replicas         int32
		allowedEvictions int
	}{
		"one gateway may be evicted when it is the only one":  {replicas: 1, allowedEvictions: 1},
		"one of two gateways may be evicted, the other stays": {replicas: 2, allowedEvictions: 1},
		"two of three gateways may be evicted, as before":     {replicas: 3, allowedEvictions: 2},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			v := eastAWS(t)
			v.Gateway.Replicas = tc.replicas
			objs, err := Objects(v)
			if err != nil {
				t.Fatal(err)
			}
			var pdb *policyv1.PodDisruptionBudget
			for _, o := range objs {
				if o.GetKind() == "PodDisruptionBudget" {
					pdb = &policyv1.PodDisruptionBudget{}
					if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, pdb); err != nil {
						t.Fatal(err)
					}
				}
			}
			if pdb == nil {
				t.Fatal("no PodDisruptionBudget rendered")
			}
			// What the disruption controller allows with every replica healthy.
			healthy := int(tc.replicas)
			var allowed int
			switch {
			case pdb.Spec.MinAvailable != nil && pdb.Spec.MaxUnavailable == nil:
				minAvailable, err := intstr.GetScaledValueFromIntOrPercent(pdb.Spec.MinAvailable, healthy, true)
				if err != nil {
					t.Fatal(err)
				}
				allowed = healthy - minAvailable
			case pdb.Spec.MaxUnavailable != nil && pdb.Spec.MinAvailable == nil:
				allowed, err = intstr.GetScaledValueFromIntOrPercent(pdb.Spec.MaxUnavailable, healthy, true)
				if err != nil {
					t.Fatal(err)
				}
			default:
				t.Fatalf("want one of minAvailable and maxUnavailable: %+v", pdb.Spec)
			}
			if allowed != tc.allowedEvictions {
				t.Errorf("%d healthy gateways, budget %+v: %d evictions allowed, want %d", healthy, pdb.Spec, allowed, tc.allowedEvictions)
			}
		})
	}
}

// TestApplyTwiceConverges applies the install to a real API server with
// server-side apply, then again: the second apply must change nothing.
func TestApplyTwiceConverges(t *testing.T) {
	ctx := context.Background()
	c := testenv.Start(t, "east")["east"]
	v := eastAWS(t)
	v.Metrics.ServiceMonitor = false // its CRD is the prometheus-operator's, absent here
	objs, err := Objects(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := Apply(ctx, c.Client, objs); err != nil {
		t.Fatal(err)
	}
	before := resourceVersions(t, c.Client, objs)
	if err := Apply(ctx, c.Client, objs); err != nil {
		t.Fatal(err)
	}
	after := resourceVersions(t, c.Client, objs)
	for key, rv := range before {
		if after[key] != rv {
			t.Errorf("%s changed on the second apply: resourceVersion %s -> %s", key, rv, after[key])
		}
	}

	// Least privilege, as the API server decides it.
	access := []struct {
		sa, verb, group, resource, namespace string
		allowed                              bool
	}{
		{ControllerName, "create", "", "services", "payments", true},
		{ControllerName, "delete", "discovery.k8s.io", "endpointslices", "payments", true},
		{ControllerName, "patch", "backbone.dev", "links/status", "backbone-system", true},
		{ControllerName, "update", "coordination.k8s.io", "leases", "backbone-system", true},
		{ControllerName, "get", "", "secrets", "backbone-system", true},
		{ControllerName, "get", "", "secrets", "payments", false},
		{ControllerName, "update", "backbone.dev", "links", "backbone-system", true}, // its finalizer
		{ControllerName, "update", "backbone.dev", "egresstargets", "backbone-system", false},
		{ControllerName, "update", "backbone.dev", "egresstargets/finalizers", "backbone-system", true},
		{ControllerName, "create", "networking.k8s.io", "ingresses", "payments", true},
		{ControllerName, "delete", "backbone.dev", "links", "backbone-system", false},
		{ControllerName, "create", "", "namespaces", "", false},
		{ControllerName, "update", "coordination.k8s.io", "leases", "kube-system", false},
		{GatewayName, "list", "", "services", "", true},
		{GatewayName, "watch", "backbone.dev", "egresstargets", "", true},
		{GatewayName, "get", "", "secrets", "backbone-system", false},
		{GatewayName, "create", "", "services", "payments", false},
		{LinkReaderServiceAccount, "watch", "multicluster.x-k8s.io", "serviceexports", "", true},
		{LinkReaderServiceAccount, "get", "", "secrets", "backbone-system", false},
		{LinkReaderServiceAccount, "get", "", "pods", "payments", false},
	}
	for _, a := range access {
		sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User:   "system:serviceaccount:backbone-system:" + a.sa,
			Groups: []string{"system:serviceaccounts", "system:serviceaccounts:backbone-system", "system:authenticated"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: a.verb, Group: a.group, Resource: a.resource, Namespace: a.namespace,
			},
		}}
		res, err := c.Clientset.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if res.Status.Allowed != a.allowed {
			t.Errorf("%s %s %s/%s in %q: allowed=%v, want %v", a.sa, a.verb, a.group, a.resource, a.namespace, res.Status.Allowed, a.allowed)
		}
	}
}

func resourceVersions(t *testing.T, c client.Client, objs []*unstructured.Unstructured) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, o := range objs {
		live := &unstructured.Unstructured{}
		live.SetGroupVersionKind(o.GroupVersionKind())
		if err := c.Get(context.Background(), client.ObjectKeyFromObject(o), live); err != nil {
			t.Fatal(err)
		}
		out[o.GetKind()+"/"+client.ObjectKeyFromObject(o).String()] = live.GetResourceVersion()
	}
	return out
}
