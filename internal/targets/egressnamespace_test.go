package targets_test

import (
	"strconv"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/controller"
	"github.com/backbone-mesh/backbone/internal/targets"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

// TestEgressTargetOutsideBackboneSystem: `backbone render --namespace`
// puts EgressTargets in another namespace; the controller, with only the
// access `backbone install` grants it, serves them there, on gateway
// ports that no target in another namespace holds.
func TestEgressTargetOutsideBackboneSystem(t *testing.T) {
	c := testenv.Start(t, "east")["east"]
	if err := c.CreateNamespace("egress"); err != nil {
		t.Fatal(err)
	}
	withGateway(t, c)
	start(t, asController(t, c), controller.Options{})

	for _, key := range []types.NamespacedName{{Namespace: "egress", Name: "resource-a"}, {Namespace: v1alpha1.SystemNamespace, Name: "ledger"}} {
		if err := c.Client.Create(bg, &v1alpha1.EgressTarget{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name},
			Spec: v1alpha1.EgressTargetSpec{HostName: key.Name, DNSName: key.Name + ".example.com", Environment: "east", Squad: "maxus"}}); err != nil {
			t.Fatal(err)
		}
	}
	ports := map[string]string{}
	for _, ns := range []string{"egress", v1alpha1.SystemNamespace} {
		var list corev1.ServiceList
		eventually(t, "the Service of the target in "+ns, func() bool {
			return c.Client.List(bg, &list, client.InNamespace(ns), client.HasLabels{targets.EgressTargetLabel}) == nil && len(list.Items) == 1
		})
		svc := list.Items[0]
		if len(svc.OwnerReferences) != 1 || svc.OwnerReferences[0].Kind != "EgressTarget" || svc.Labels[v1alpha1.ExportedLabel] != "true" {
			t.Fatalf("%s/%s: owners %v labels %v", svc.Namespace, svc.Name, svc.OwnerReferences, svc.Labels)
		}
		ports[ns] = svc.Annotations[targets.EgressPortAnnotation]
		var sl discoveryv1.EndpointSlice
		eventually(t, "the EndpointSlice on the gateway in "+ns, func() bool {
			return c.Client.Get(bg, types.NamespacedName{Namespace: ns, Name: svc.Name + "-egress"}, &sl) == nil &&
				len(sl.Endpoints) == 1 && sl.Endpoints[0].Addresses[0] == "10.1.0.7" && strconv.Itoa(int(*sl.Ports[0].Port)) == ports[ns]
		})
	}
	if ports["egress"] == "" || ports["egress"] == ports[v1alpha1.SystemNamespace] {
		t.Fatalf("gateway ports %v: targets in two namespaces must not share one", ports)
	}
	// Status is written there too (no gateway answers at 10.1.0.7).
	eventually(t, "the target's status in egress", func() bool {
		var et v1alpha1.EgressTarget
		_ = c.Client.Get(bg, types.NamespacedName{Namespace: "egress", Name: "resource-a"}, &et)
		return len(et.Status.Conditions) == 1 && et.Status.Conditions[0].Reason == "ProbeUnavailable"
	})
}
