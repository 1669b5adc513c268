package mirror_test

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/mirror"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

// ipv6FirstDualStack are the service ranges of a dual-stack cluster whose
// first family is IPv6: a Service made without families gets an IPv6
// cluster IP there.
const ipv6FirstDualStack = "fd00:10:96::/112,10.96.0.0/16"

// TestMirrorsAreIPv4InAnIPv6FirstCluster: west is a dual-stack cluster
// whose first family is IPv6, east an IPv4 one. A mirror's slice holds the
// gateway's IPv4 addresses, and kube-proxy routes an IPv6 cluster IP to
// none of them: every mirror in west must be IPv4 single-stack, whatever
// the cluster would give a Service by default. A mirror an older backbone
// made with the cluster's IPv6 cluster IP (it set no families) is replaced
// by an IPv4 one, keeping its gateway port.
func TestMirrorsAreIPv4InAnIPv6FirstCluster(t *testing.T) {
	west := testenv.StartWith(t, testenv.Options{ServiceCIDRs: ipv6FirstDualStack}, "west")["west"]
	east := testenv.Start(t, "east")["east"]
	for _, c := range []*testenv.Cluster{east, west} {
		if err := c.CreateNamespace("shop"); err != nil {
			t.Fatal(err)
		}
	}
	registerGateway(t, west, "192.0.2.2")

	// The mirror of orders as an older backbone made it: its ownership
	// labels and remote name, the cluster's default families, and its
	// slice on a gateway port.
	const oldPort = 20007
	old := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "orders-east",
			Labels:      map[string]string{v1alpha1.ManagedByLabel: v1alpha1.ManagedByValue, v1alpha1.MirroredFromLabel: "east"},
			Annotations: map[string]string{v1alpha1.RemoteNameAnnotation: "orders"}},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "p0", Port: 80}}},
	}
	if err := west.Client.Create(bg, old); err != nil {
		t.Fatal(err)
	}
	if ip, err := netip.ParseAddr(old.Spec.ClusterIP); err != nil || !ip.Is6() || !slices.Equal(old.Spec.IPFamilies, []corev1.IPFamily{corev1.IPv6Protocol}) {
		t.Fatalf("west gave a Service without families %v %v: not an IPv6-first cluster, so the test would prove nothing", old.Spec.IPFamilies, old.Spec.ClusterIPs)
	}
	oldSlice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "orders-east",
			Labels: map[string]string{discoveryv1.LabelServiceName: "orders-east", discoveryv1.LabelManagedBy: v1alpha1.EndpointSliceManagedBy,
				v1alpha1.MirroredFromLabel: "east"},
			Annotations: map[string]string{v1alpha1.RemoteNameAnnotation: "orders"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"192.0.2.2"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("p0"), Port: ptr.To[int32](oldPort), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	if err := west.Client.Create(bg, oldSlice); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"orders", "cart"} {
		if err := east.Client.Create(bg, service("shop", name, exported(), 80)); err != nil {
			t.Fatal(err)
		}
	}
	createLink(t, west, "east", linkReaderKubeconfig(t, east, east.Config.Host))
	runController(t, west)

	t.Run("a new mirror is IPv4 single-stack and its slice points at the gateway", func(t *testing.T) {
		eventually(t, "cart-east has its slice", func() bool {
			_, ok := get(west, "shop", "cart-east", &discoveryv1.EndpointSlice{})
			return ok
		})
		svc, _ := get(west, "shop", "cart-east", &corev1.Service{})
		if err := ipv4SingleStack(svc); err != nil {
			t.Errorf("cart-east: %v", err)
		}
		sl, _ := get(west, "shop", "cart-east", &discoveryv1.EndpointSlice{})
		if err := onTheGateway(sl); err != nil {
			t.Errorf("cart-east's slice: %v", err)
		}
	})

	t.Run("a mirror with an IPv6 cluster IP is replaced by an IPv4 one", func(t *testing.T) {
		var svc *corev1.Service
		eventually(t, "orders-east, made with an IPv6 cluster IP, is replaced", func() bool {
			var ok bool
			svc, ok = get(west, "shop", "orders-east", &corev1.Service{})
			return ok && svc.UID != old.UID
		})
		if err := ipv4SingleStack(svc); err != nil {
			t.Fatalf("orders-east's replacement: %v", err)
		}
		eventually(t, "the Link is synced", func() bool {
			c := linkReady(west, "east")
			return c != nil && c.Reason == mirror.ReasonSynced
		})
		sl, _ := get(west, "shop", "orders-east", &discoveryv1.EndpointSlice{})
		if err := onTheGateway(sl); err != nil {
			t.Errorf("orders-east's slice: %v", err)
		}
		if len(sl.Ports) == 1 && sl.Ports[0].Port != nil && *sl.Ports[0].Port != oldPort {
			t.Errorf("orders-east's gateway port moved from %d to %d with the replacement", oldPort, *sl.Ports[0].Port)
		}
		time.Sleep(5 * time.Second) // two resyncs
		if now, ok := get(west, "shop", "orders-east", &corev1.Service{}); !ok || now.UID != svc.UID {
			t.Errorf("orders-east was replaced again after it was IPv4 (present %v)", ok)
		}
	})
}

// ipv4SingleStack says why svc is not an IPv4 single-stack ClusterIP
// Service, or nil when it is one.
func ipv4SingleStack(svc *corev1.Service) error {
	if !slices.Equal(svc.Spec.IPFamilies, []corev1.IPFamily{corev1.IPv4Protocol}) {
		return fmt.Errorf("IP families %v, want [IPv4]", svc.Spec.IPFamilies)
	}
	if svc.Spec.IPFamilyPolicy == nil || *svc.Spec.IPFamilyPolicy != corev1.IPFamilyPolicySingleStack {
		return fmt.Errorf("IP family policy %v, want %s", ptr.Deref(svc.Spec.IPFamilyPolicy, ""), corev1.IPFamilyPolicySingleStack)
	}
	if len(svc.Spec.ClusterIPs) != 1 || svc.Spec.ClusterIPs[0] != svc.Spec.ClusterIP {
		return fmt.Errorf("cluster IPs %v (cluster IP %s), want the cluster IP alone", svc.Spec.ClusterIPs, svc.Spec.ClusterIP)
	}
	if ip, err := netip.ParseAddr(svc.Spec.ClusterIP); err != nil || !ip.Is4() {
		return fmt.Errorf("cluster IP %q, want an IPv4 address", svc.Spec.ClusterIP)
	}
	return nil
}

// onTheGateway says why a mirror's slice does not send its one port to
// the gateway registered by registerGateway, or nil when it does.
func onTheGateway(sl *discoveryv1.EndpointSlice) error {
	if sl.AddressType != discoveryv1.AddressTypeIPv4 {
		return fmt.Errorf("address type %s, want %s", sl.AddressType, discoveryv1.AddressTypeIPv4)
	}
	if len(sl.Endpoints) != 1 || !slices.Equal(sl.Endpoints[0].Addresses, []string{"192.0.2.2"}) {
		return fmt.Errorf("endpoints %+v, want the gateway 192.0.2.2 alone", sl.Endpoints)
	}
	if len(sl.Ports) != 1 || sl.Ports[0].Port == nil || *sl.Ports[0].Port < 20000 || *sl.Ports[0].Port > 20999 {
		return fmt.Errorf("ports %+v, want one gateway port in 20000-20999", sl.Ports)
	}
	return nil
}
