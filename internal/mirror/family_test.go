package mirror_test

import (
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/backbone-mesh/backbone/internal/testenv"
)

// mirrorOfFamily waits until west's mirror ns/name is a Service of family
// alone with a cluster IP of it, and its slice of that address type points
// at gateway.
func mirrorOfFamily(t *testing.T, west *testenv.Cluster, ns, name string, family corev1.IPFamily, addressType discoveryv1.AddressType, gateway string) {
	t.Helper()
	var last string
	eventually(t, name+" is a mirror of family "+string(family), func() bool {
		svc, ok := get(west, ns, name, &corev1.Service{})
		sl, okSlice := get(west, ns, name, &discoveryv1.EndpointSlice{})
		if !ok || !okSlice {
			last = "missing"
			return false
		}
		last = svc.Spec.ClusterIP + " " + string(sl.AddressType)
		if !slices.Equal(svc.Spec.IPFamilies, []corev1.IPFamily{family}) || svc.Spec.IPFamilyPolicy == nil ||
			*svc.Spec.IPFamilyPolicy != corev1.IPFamilyPolicySingleStack || !ofFamily(svc.Spec.ClusterIP, family) {
			return false
		}
		return sl.AddressType == addressType && len(sl.Endpoints) == 1 && slices.Equal(sl.Endpoints[0].Addresses, []string{gateway})
	})
	t.Logf("%s/%s: %s", ns, name, last)
}

// TestMirrorsTakeTheGatewaysFamily runs the controller in an IPv6-first
// dual-stack cluster: a mirror and its slice take the family of the
// gateway Service, whatever the cluster's first family; when the gateway
// Service is made anew in the other family, so are the mirror and its
// slice (neither a Service's first family nor a slice's address type can
// change); and an IPv6-only gateway is mirrored to like an IPv4 one.
func TestMirrorsTakeTheGatewaysFamily(t *testing.T) {
	east := testenv.Start(t, "east")["east"]
	west := testenv.StartWith(t, testenv.Options{ServiceCIDRs: "fd00:10:96::/112,10.96.0.0/16"}, "west")["west"]
	for _, c := range []*testenv.Cluster{east, west} {
		if err := c.CreateNamespace("shop"); err != nil {
			t.Fatal(err)
		}
	}
	west.ReplaceGateway(t, corev1.IPv4Protocol, "192.0.2.2")
	createLink(t, west, "east", linkReaderKubeconfig(t, east, east.Config.Host))
	runController(t, west)
	if err := east.Client.Create(bg, service("shop", "cart", exported(), 80)); err != nil {
		t.Fatal(err)
	}
	mirrorOfFamily(t, west, "shop", "cart-east", corev1.IPv4Protocol, discoveryv1.AddressTypeIPv4, "192.0.2.2")
	before, _ := get(west, "shop", "cart-east", &corev1.Service{})

	west.ReplaceGateway(t, corev1.IPv6Protocol, "fd00:213::2")
	mirrorOfFamily(t, west, "shop", "cart-east", corev1.IPv6Protocol, discoveryv1.AddressTypeIPv6, "fd00:213::2")
	if after, _ := get(west, "shop", "cart-east", &corev1.Service{}); after.UID == before.UID {
		t.Error("the mirror kept its UID: its first family cannot have changed in place")
	}
	// A Service exported now is IPv6 from the start.
	if err := east.Client.Create(bg, service("shop", "pay", exported(), 8080)); err != nil {
		t.Fatal(err)
	}
	mirrorOfFamily(t, west, "shop", "pay-east", corev1.IPv6Protocol, discoveryv1.AddressTypeIPv6, "fd00:213::2")
	eventually(t, "the Link is Synced", func() bool {
		c := linkReady(west, "east")
		return c != nil && c.Status == metav1.ConditionTrue
	})
}

// ofFamily says whether addr is an IP address of family.
func ofFamily(addr string, family corev1.IPFamily) bool {
	ip, err := netip.ParseAddr(addr)
	return err == nil && ip.Is4() == (family == corev1.IPv4Protocol)
}
