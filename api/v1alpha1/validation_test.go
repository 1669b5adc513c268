package v1alpha1_test

import (
	"context"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

func validLink() *v1alpha1.Link {
	return &v1alpha1.Link{
		ObjectMeta: metav1.ObjectMeta{Name: "east", Namespace: v1alpha1.SystemNamespace},
		Spec: v1alpha1.LinkSpec{
			TargetClusterName: "east",
			CredentialsSecret: v1alpha1.SecretReference{Name: "link-east"},
			GatewayAddresses:  []v1alpha1.GatewayAddress{{Host: "gw.east.example.com", Port: 4143}},
			GatewayIdentity:   "spiffe://backbone.example/cluster/east",
		},
	}
}

// TestCRDValidation runs against two real API servers at once: the CRDs
// are installed in both and the API server's own validation accepts a valid
// Link (with defaults applied) and refuses invalid objects.
func TestCRDValidation(t *testing.T) {
	clusters := testenv.Start(t, "east", "west")
	ctx := context.Background()

	for name, c := range clusters {
		link := validLink()
		if err := c.Client.Create(ctx, link); err != nil {
			t.Fatalf("%s: creating a valid Link: %v", name, err)
		}
		got := &v1alpha1.Link{}
		if err := c.Client.Get(ctx, client.ObjectKeyFromObject(link), got); err != nil {
			t.Fatal(err)
		}
		if got.Spec.Probe.Period == nil || got.Spec.Probe.Period.Duration.String() != "3s" {
			t.Errorf("%s: probe period default not applied: %+v", name, got.Spec.Probe)
		}
		if got.Spec.Probe.FailureThreshold == nil || *got.Spec.Probe.FailureThreshold != 3 {
			t.Errorf("%s: failure threshold default not applied: %+v", name, got.Spec.Probe)
		}
	}

	west := clusters["west"]
	rejected := map[string]struct {
		mutate    func(*v1alpha1.Link)
		wantField string
	}{
		"a gateway port above 65535 is rejected": {
			mutate:    func(l *v1alpha1.Link) { l.Spec.GatewayAddresses[0].Port = 70000 },
			wantField: "spec.gatewayAddresses[0].port",
		},
		"a gateway port of zero is rejected": {
			mutate:    func(l *v1alpha1.Link) { l.Spec.GatewayAddresses[0].Port = 0 },
			wantField: "spec.gatewayAddresses[0].port",
		},
		"a missing target cluster name is rejected": {
			mutate:    func(l *v1alpha1.Link) { l.Spec.TargetClusterName = "" },
			wantField: "spec.targetClusterName",
		},
		"a target cluster name that is not a DNS label is rejected": {
			mutate:    func(l *v1alpha1.Link) { l.Spec.TargetClusterName = "East_1" },
			wantField: "spec.targetClusterName",
		},
		"an identity outside the SPIFFE cluster form is rejected": {
			mutate:    func(l *v1alpha1.Link) { l.Spec.GatewayIdentity = "spiffe://backbone.example/ns/east" },
			wantField: "spec.gatewayIdentity",
		},
		"a Link without gateway addresses is rejected": {
			mutate:    func(l *v1alpha1.Link) { l.Spec.GatewayAddresses = nil },
			wantField: "spec.gatewayAddresses",
		},
	}
	for name, tc := range rejected {
		t.Run(name, func(t *testing.T) {
			link := validLink()
			link.Name = "invalid"
			tc.mutate(link)
			err := west.Client.Create(ctx, link)
			if !apierrors.IsInvalid(err) {
				t.Fatalf("want an Invalid error, got %v", err)
			}
			if !strings.Contains(err.Error(), tc.wantField) {
				t.Errorf("error does not name %s: %v", tc.wantField, err)
			}
		})
	}

	egress := &v1alpha1.EgressTarget{
		ObjectMeta: metav1.ObjectMeta{Name: "resource-a", Namespace: "default"},
		Spec: v1alpha1.EgressTargetSpec{
			HostName: "resource-a", DNSName: "resource-a.azurewebsites.net",
			Environment: "east", Squad: "maxus",
		},
	}
	if err := west.Client.Create(ctx, egress); err != nil {
		t.Fatalf("creating the seed's egress target: %v", err)
	}
	if egress.Spec.Port != 443 || egress.Spec.Protocol != v1alpha1.EgressProtocolHTTPS || egress.Spec.ProbePath != "/" {
		t.Errorf("egress defaults not applied: %+v", egress.Spec)
	}
	bad := egress.DeepCopy()
	bad.ResourceVersion = ""
	bad.Name = "bad"
	bad.Spec.DNSName = "not a dns name"
	if err := west.Client.Create(ctx, bad); !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "spec.dnsName") {
		t.Errorf("want spec.dnsName rejected, got %v", err)
	}
}
