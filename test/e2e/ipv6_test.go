package e2e

import (
	"context"
	"net"
	"os/exec"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/backbone-mesh/backbone/internal/kube"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

// addIPv6 gives the test namespace's link an IPv6 address (without
// duplicate address detection, which would hold it back for a second),
// removed when the test ends.
func addIPv6(t *testing.T, addr string) {
	t.Helper()
	if out, err := exec.Command("ip", "-6", "addr", "add", addr+"/64", "dev", "bbtest0", "nodad").CombinedOutput(); err != nil {
		t.Fatalf("adding %s: %v: %s", addr, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "-6", "addr", "del", addr+"/64", "dev", "bbtest0").Run() })
}

// TestAnIPv6OnlyCluster links an IPv6-only cluster (west: IPv6 service
// range, gateway on an IPv6 address) with an IPv4 one (east), both ways:
// west's mirror of east's service is IPv6, its slice holds the gateway's
// IPv6 address, and a call through it reaches east; east's mirror of a
// service west serves from an IPv6 address is IPv4, and a call through it
// reaches west, its gateway dialing the IPv6 backend.
func TestAnIPv6OnlyCluster(t *testing.T) {
	testenv.RequireNetns(t)
	const westIP, westBackendIP = "fd00:213::2", "fd00:213::10"
	addIPv6(t, westIP)
	addIPv6(t, westBackendIP)
	east := testenv.Start(t, "east")["east"]
	west := testenv.StartWith(t, testenv.Options{ServiceCIDRs: "fd00:10:96::/112"}, "west")["west"]
	for _, c := range []*testenv.Cluster{east, west} {
		installRBAC(t, c)
		ensureNamespace(t, c, "demo")
	}
	p := newPKI(t, trustDomain)
	eastID, westID := p.issue(t, "east"), p.issue(t, "west")
	eastGW := startGateway(t, east, 1, eastID)
	westGW := startGatewayAt(t, west, westIP, westID)
	registerGateway(t, east, eastGW)
	registerGateway(t, west, westGW)

	// east serves hello over IPv4, west serves echo over IPv6.
	exportHTTP(t, east, testenv.ListenNetns(t, 10), "demo", "hello", "east")
	echo, err := net.Listen("tcp", net.JoinHostPort(westBackendIP, "0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = echo.Close() })
	exportHTTP(t, west, echo, "demo", "echo", "west")

	// Linked both ways, as users do.
	for _, l := range []struct {
		from, to *testenv.Cluster
		gw       *gatewayProc
	}{{west, east, eastGW}, {east, west, westGW}} {
		out := run(t, "--kubeconfig", l.to.Kubeconfig, "link", "--cluster-name", l.to.Name, "--gateway-address", l.gw.inbound, "--create-token")
		if err := kube.ApplyYAML(context.Background(), l.from.Client, out, "e2e"); err != nil {
			t.Fatalf("applying backbone link output: %v\n%s", err, out)
		}
	}
	startController(t, east, eastID, 1)
	startControllerAt(t, west, westID, westIP)

	ofFamily := func(c *testenv.Cluster, name string, family corev1.IPFamily, addressType discoveryv1.AddressType) {
		t.Helper()
		var svc corev1.Service
		if err := c.Client.Get(context.Background(), types.NamespacedName{Namespace: "demo", Name: name}, &svc); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(svc.Spec.IPFamilies, []corev1.IPFamily{family}) {
			t.Errorf("%s in %s: families %v (cluster IP %s), want %s", name, c.Name, svc.Spec.IPFamilies, svc.Spec.ClusterIP, family)
		}
		var sl discoveryv1.EndpointSlice
		if err := c.Client.Get(context.Background(), types.NamespacedName{Namespace: "demo", Name: name}, &sl); err != nil {
			t.Fatal(err)
		}
		if sl.AddressType != addressType {
			t.Errorf("%s in %s: slice of %s, want %s", name, c.Name, sl.AddressType, addressType)
		}
	}

	helloAddr := waitMirror(t, west, "demo", "hello-east", westIP)
	ofFamily(west, "hello-east", corev1.IPv6Protocol, discoveryv1.AddressTypeIPv6)
	waitListening(t, helloAddr)
	if body := get(t, "http://"+helloAddr+"/"); body != "hello from east via HTTP/1.1" {
		t.Errorf("west -> east over IPv6 answered %q", body)
	}

	echoAddr := waitMirror(t, east, "demo", "echo-west", eastGW.ip)
	ofFamily(east, "echo-west", corev1.IPv4Protocol, discoveryv1.AddressTypeIPv4)
	waitListening(t, echoAddr)
	if body := get(t, "http://"+echoAddr+"/"); body != "hello from west via HTTP/1.1" {
		t.Errorf("east -> west's IPv6 backend answered %q", body)
	}
}
