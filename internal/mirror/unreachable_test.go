package mirror_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/mirror"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

// TestRemoteDownAtStartIsNotACredentialsProblem: a controller that
// starts while the remote API server is away reports it unreachable —
// not the credentials invalid, which would send an operator to rotate
// credentials that are fine — keeps the mirrors, and syncs when it is
// back.
func TestRemoteDownAtStartIsNotACredentialsProblem(t *testing.T) {
	east, west := linkedClusters(t, "shop")
	proxy := linkThroughProxy(t, east, west)
	if err := east.Client.Create(bg, service("shop", "orders", exported(), 80)); err != nil {
		t.Fatal(err)
	}
	stop := runController(t, west)
	eventually(t, "orders-east is mirrored", func() bool { _, ok := get(west, "shop", "orders-east", &corev1.Service{}); return ok })
	// The status is written after the mirrors: stopped before it, the
	// controller would leave WaitingForRemote behind, which the next
	// check would take for the restarted controller's verdict.
	eventually(t, "the Link reports Synced", func() bool {
		c := linkReady(west, "east")
		return c != nil && c.Reason == mirror.ReasonSynced
	})
	stop()

	proxy.SetRefuse(true)
	proxy.ResetAll()
	runController(t, west)
	eventually(t, "the Link reports the outage", func() bool {
		c := linkReady(west, "east")
		return c != nil && c.Reason != mirror.ReasonSynced
	})
	if c := linkReady(west, "east"); c.Reason != mirror.ReasonRemoteUnreachable {
		t.Fatalf("remote away at start: Ready %s (%s), want %s", c.Reason, c.Message, mirror.ReasonRemoteUnreachable)
	}
	if _, ok := get(west, "shop", "orders-east", &corev1.Service{}); !ok {
		t.Fatal("the mirror was deleted during the outage")
	}
	proxy.SetRefuse(false)
	eventually(t, "the Link syncs once the remote is back", func() bool {
		c := linkReady(west, "east")
		return c != nil && c.Reason == mirror.ReasonSynced
	})
}

// TestLinkTargetIsImmutable: the API server refuses to point a Link at
// another cluster; the mirrors of the first are named after it and would
// be left behind by a Link that no longer selects them.
func TestLinkTargetIsImmutable(t *testing.T) {
	west := testenv.Start(t, "west")["west"]
	link := createLink(t, west, "east", []byte("unused"))
	link.Spec.TargetClusterName = "north"
	err := west.Client.Update(bg, link)
	if err == nil || !strings.Contains(err.Error(), "targetClusterName is immutable") {
		t.Fatalf("retargeting a Link: %v, want it refused as immutable", err)
	}
}

// TestARefusedMirrorDoesNotHoldTheOthers: one mirror the API server will
// never take (here a per-pod mirror of a headless Service without ports,
// a ClusterIP Service with no port) fails alone: the Link's other
// mirrors still follow the gateway's addresses.
func TestARefusedMirrorDoesNotHoldTheOthers(t *testing.T) {
	east, west := mirroring(t, "shop", "good")
	bad := service("shop", "bad", exported())
	bad.Spec.ClusterIP = corev1.ClusterIPNone
	if err := east.Client.Create(bg, bad); err != nil {
		t.Fatal(err)
	}
	if err := east.Client.Create(bg, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "shop", Name: "bad-pods", Labels: map[string]string{discoveryv1.LabelServiceName: "bad", corev1.IsHeadlessService: ""}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.9.0.10"}, Hostname: ptr.To("bad-0")}},
	}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the Link reports the refused mirror", func() bool {
		c := linkReady(west, "east")
		return c != nil && c.Reason != mirror.ReasonSynced
	})
	gw, _ := get(west, v1alpha1.SystemNamespace, "backbone-gateway-ipv4", &discoveryv1.EndpointSlice{})
	gw.Endpoints = append(gw.Endpoints, discoveryv1.Endpoint{Addresses: []string{"192.0.2.3"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
	if err := west.Client.Update(bg, gw); err != nil {
		t.Fatal(err)
	}
	eventually(t, "good-east follows the gateway's new address", func() bool {
		s, _ := get(west, "shop", "good-east", &discoveryv1.EndpointSlice{})
		return len(s.Endpoints) == 2
	})
	if c := linkReady(west, "east"); c == nil || !strings.Contains(c.Message, "bad") {
		t.Errorf("the Link's Ready does not name the refused mirror: %+v", c)
	}
}

// TestADeadRemoteDoesNotHoldUpTheOthers: a Link whose remote API server
// takes connections and never answers (a black-holed link) holds its own
// reconcile until the client's timeout, not the other Links' changes —
// the watch's start asked the remote while holding the lock every single
// change takes, so each of east's changes waited up to 15 s.
func TestADeadRemoteDoesNotHoldUpTheOthers(t *testing.T) {
	east, west := mirroring(t, "shop", "first")
	dead := apiServerProxy(t, east)
	dead.SetStalled(true)
	createLink(t, west, "north", linkReaderKubeconfig(t, east, "https://"+dead.Addr()))
	eventually(t, "north's remote is dialled", func() bool { return dead.Accepted() > 0 })

	// Single changes on east while north's start waits for its timeout.
	const bound = 5 * time.Second // a change takes milliseconds; north holds on for 15 s
	for i := range 6 {
		name := fmt.Sprintf("during-%d", i)
		began := time.Now()
		if err := east.Client.Create(bg, service("shop", name, exported(), 80)); err != nil {
			t.Fatal(err)
		}
		for {
			if _, ok := get(west, "shop", name+"-east", &corev1.Service{}); ok {
				break
			}
			if time.Since(began) > bound {
				t.Fatalf("%s was not mirrored within %s while north's remote did not answer", name, bound)
			}
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(time.Second)
	}
	eventually(t, "north reports its remote unreachable", func() bool {
		c := linkReady(west, "north")
		return c != nil && c.Reason == mirror.ReasonRemoteUnreachable
	})
}

// TestADeletedLinkLeavesNoMirror: the Link is deleted while single
// changes are being mirrored. A change that read the Link before its
// deletion wrote its mirror after the deletion had listed the mirrors (or
// before the cache it listed from had it): that mirror outlived its Link
// for good.
func TestADeletedLinkLeavesNoMirror(t *testing.T) {
	east, west := mirroring(t, "shop", "first")
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 60 {
			_ = east.Client.Create(bg, service("shop", fmt.Sprintf("late-%d", i), exported(), 80))
			time.Sleep(5 * time.Millisecond)
		}
	}()
	time.Sleep(150 * time.Millisecond)
	if err := west.Client.Delete(bg, &v1alpha1.Link{ObjectMeta: metav1.ObjectMeta{Namespace: v1alpha1.SystemNamespace, Name: "east"}}); err != nil {
		t.Fatal(err)
	}
	<-done
	eventually(t, "the Link is gone", func() bool { _, ok := get(west, v1alpha1.SystemNamespace, "east", &v1alpha1.Link{}); return !ok })
	time.Sleep(time.Second) // any write still in flight lands
	var svcs corev1.ServiceList
	if err := west.Client.List(bg, &svcs, client.MatchingLabels{v1alpha1.MirroredFromLabel: "east"}); err != nil {
		t.Fatal(err)
	}
	var slices discoveryv1.EndpointSliceList
	if err := west.Client.List(bg, &slices, client.MatchingLabels{v1alpha1.MirroredFromLabel: "east"}); err != nil {
		t.Fatal(err)
	}
	if len(svcs.Items)+len(slices.Items) > 0 {
		var names []string
		for _, s := range svcs.Items {
			names = append(names, "Service "+s.Name)
		}
		for _, s := range slices.Items {
			names = append(names, "EndpointSlice "+s.Name)
		}
		t.Fatalf("mirrors outlived their Link: %v", names)
	}
}

// TestARemoteThatRefusesOneResourceSaysWhich: a link reader that may list
// Services but not EndpointSlices (a role tightened by hand) never
// completes the first list; the Link says which list is refused and
// why, instead of waiting in silence while the remote answers pings.
func TestARemoteThatRefusesOneResourceSaysWhich(t *testing.T) {
	east, west := linkedClusters(t, "shop")
	createLink(t, west, "east", linkReaderKubeconfig(t, east, east.Config.Host))
	role := &rbacv1.ClusterRole{}
	if err := east.Client.Get(bg, client.ObjectKey{Name: "backbone-link-reader"}, role); err != nil {
		t.Fatal(err)
	}
	var kept []rbacv1.PolicyRule
	for _, r := range role.Rules {
		if !slices.Contains(r.Resources, "endpointslices") {
			kept = append(kept, r)
		}
	}
	role.Rules = kept
	if err := east.Client.Update(bg, role); err != nil {
		t.Fatal(err)
	}
	runController(t, west)
	eventually(t, "the Link names the refused list", func() bool {
		c := linkReady(west, "east")
		return c != nil && c.Reason == mirror.ReasonCredentialsRejected && strings.Contains(c.Message, "EndpointSlice")
	})
}
