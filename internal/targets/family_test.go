package targets_test

import (
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/controller"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

// TestEgressServicesTakeTheGatewaysFamily runs the controller in an
// IPv6-first dual-stack cluster: an EgressTarget's Service and slice take
// the family of the gateway Service, whatever the cluster's first family;
// when the gateway Service is made anew in the other family, so are they
// (neither a Service's first family nor a slice's address type can
// change in place).
func TestEgressServicesTakeTheGatewaysFamily(t *testing.T) {
	c := testenv.StartWith(t, testenv.Options{ServiceCIDRs: "fd00:10:96::/112,10.96.0.0/16"}, "east")["east"]
	c.ReplaceGateway(t, corev1.IPv4Protocol, "10.1.0.7")
	run(t, c, controller.Options{})
	createEgressTarget(t, c, "ledger")

	var first types.UID
	egressOfFamily := func(family corev1.IPFamily, addressType discoveryv1.AddressType, gateway string) {
		t.Helper()
		var last string
		eventually(t, "the egress Service and slice are "+string(family), func() bool {
			var svc corev1.Service
			var sl discoveryv1.EndpointSlice
			if c.Client.Get(bg, types.NamespacedName{Namespace: v1alpha1.SystemNamespace, Name: "ledger"}, &svc) != nil ||
				c.Client.Get(bg, types.NamespacedName{Namespace: v1alpha1.SystemNamespace, Name: "ledger-egress"}, &sl) != nil {
				return false
			}
			if first == "" {
				first = svc.UID
			}
			last = svc.Spec.ClusterIP + " " + string(sl.AddressType)
			ip, err := netip.ParseAddr(svc.Spec.ClusterIP)
			if err != nil || ip.Is4() != (family == corev1.IPv4Protocol) || !slices.Equal(svc.Spec.IPFamilies, []corev1.IPFamily{family}) ||
				svc.Spec.IPFamilyPolicy == nil || *svc.Spec.IPFamilyPolicy != corev1.IPFamilyPolicySingleStack {
				return false
			}
			return sl.AddressType == addressType && len(sl.Endpoints) == 1 && slices.Equal(sl.Endpoints[0].Addresses, []string{gateway})
		})
		t.Logf("ledger: %s", last)
	}
	egressOfFamily(corev1.IPv4Protocol, discoveryv1.AddressTypeIPv4, "10.1.0.7")
	v4 := first

	c.ReplaceGateway(t, corev1.IPv6Protocol, "fd00:213::7")
	egressOfFamily(corev1.IPv6Protocol, discoveryv1.AddressTypeIPv6, "fd00:213::7")
	var svc corev1.Service
	if err := c.Client.Get(bg, types.NamespacedName{Namespace: v1alpha1.SystemNamespace, Name: "ledger"}, &svc); err != nil || svc.UID == v4 {
		t.Errorf("the egress Service kept its UID (%v): its first family cannot have changed in place", err)
	}
}
