package targets_test

import (
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/controller"
	"github.com/backbone-mesh/backbone/internal/targets"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

// TestEgressServicesAreIPv4InAnIPv6FirstCluster: with an IPv4 gateway
// Service, an egress Service's endpoints are the gateway's IPv4
// addresses, so in a dual-stack cluster whose first family is IPv6 the
// Service is IPv4 single-stack all the same — an IPv6 cluster IP would
// lead nowhere. One an older backbone made with the cluster's first
// family (IPv6, which cannot change) is replaced by an IPv4 one.
func TestEgressServicesAreIPv4InAnIPv6FirstCluster(t *testing.T) {
	c := testenv.StartWith(t, testenv.Options{ServiceCIDRs: "fd00:10:96::/112,10.96.0.0/16"}, "east")["east"]
	c.ReplaceGateway(t, corev1.IPv4Protocol, "10.1.0.7")

	// An egress Service as an older backbone made it: the target's,
	// controlled by it, with no family set.
	older := createEgressTarget(t, c, "ledger")
	old := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: older.Namespace, Name: older.Spec.HostName,
			Labels: map[string]string{
				v1alpha1.ExportedLabel:    "true",
				targets.EgressTargetLabel: older.Name,
				v1alpha1.ManagedByLabel:   v1alpha1.ManagedByValue,
				v1alpha1.SquadLabel:       older.Spec.Squad,
			},
			Annotations: map[string]string{targets.EgressPortAnnotation: "30007"}},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP,
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, AppProtocol: ptr.To("http")}}},
	}
	if err := controllerutil.SetControllerReference(older, old, testenv.Scheme); err != nil {
		t.Fatal(err)
	}
	if err := c.Client.Create(bg, old); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(old.Spec.IPFamilies, []corev1.IPFamily{corev1.IPv6Protocol}) || !isIPv6(old.Spec.ClusterIP) {
		t.Fatalf("a Service without families got %v %s: the cluster is not IPv6-first", old.Spec.IPFamilies, old.Spec.ClusterIP)
	}

	start(t, asController(t, c), controller.Options{})
	fresh := createEgressTarget(t, c, "resource-a")

	for _, et := range []*v1alpha1.EgressTarget{fresh, older} {
		name := et.Name
		var svc corev1.Service
		eventually(t, "a Service "+name+" other than the older backbone's", func() bool {
			return c.Client.Get(bg, types.NamespacedName{Namespace: v1alpha1.SystemNamespace, Name: name}, &svc) == nil && svc.UID != old.UID
		})
		if !slices.Equal(svc.Spec.IPFamilies, []corev1.IPFamily{corev1.IPv4Protocol}) ||
			!ptr.Equal(svc.Spec.IPFamilyPolicy, ptr.To(corev1.IPFamilyPolicySingleStack)) || !isIPv4(svc.Spec.ClusterIP) {
			t.Errorf("Service %s: families %v, policy %v, cluster IPs %v; want IPv4 single-stack", name,
				svc.Spec.IPFamilies, ptr.Deref(svc.Spec.IPFamilyPolicy, ""), svc.Spec.ClusterIPs)
		}
		if !metav1.IsControlledBy(&svc, et) || svc.Labels[targets.EgressTargetLabel] != name {
			t.Errorf("Service %s: owners %v, labels %v; want the target's", name, svc.OwnerReferences, svc.Labels)
		}
		t.Logf("Service %s: cluster IP %s, gateway port %s", name, svc.Spec.ClusterIP, svc.Annotations[targets.EgressPortAnnotation])
	}
}

func isIPv4(s string) bool { a, err := netip.ParseAddr(s); return err == nil && a.Is4() }

func isIPv6(s string) bool { a, err := netip.ParseAddr(s); return err == nil && a.Is6() && !a.Is4In6() }
