package targets_test

import (
	"context"
	"maps"
	"strings"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/controller"
	"github.com/backbone-mesh/backbone/internal/installtest"
	"github.com/backbone-mesh/backbone/internal/mirror"
	"github.com/backbone-mesh/backbone/internal/targets"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

// start runs a controller until the returned stop is called (or the test
// ends): the tests below restart it with another ingress mode.
func start(t *testing.T, c *testenv.Cluster, opts controller.Options) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(bg)
	done := make(chan error, 1)
	opts.ClusterName, opts.MetricsAddress, opts.HealthProbeAddress = c.Name, "0", "0"
	opts.Ports = mirror.PortRange{Low: 20000, High: 20999}
	go func() { done <- controller.Run(ctx, c.Config, opts) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("controller: %v", err)
		}
	}
	t.Cleanup(stop)
	return stop
}

func readyReason(t *testing.T, c *testenv.Cluster, name string) (string, v1alpha1.IngressTargetStatus) {
	t.Helper()
	var it v1alpha1.IngressTarget
	if err := c.Client.Get(bg, types.NamespacedName{Namespace: v1alpha1.SystemNamespace, Name: name}, &it); err != nil {
		return "", it.Status
	}
	cond := meta.FindStatusCondition(it.Status.Conditions, v1alpha1.ConditionReady)
	if cond == nil || cond.ObservedGeneration != it.Generation {
		return "", it.Status
	}
	return cond.Reason, it.Status
}

// acceptRoute writes what a Gateway implementation would: the route's
// parent status, for the route's current generation.
func acceptRoute(t *testing.T, c *testenv.Cluster, key types.NamespacedName, ref gatewayv1.ParentReference, status metav1.ConditionStatus, reason string) {
	t.Helper()
	var route gatewayv1.HTTPRoute
	if err := c.Client.Get(bg, key, &route); err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(route.DeepCopy())
	route.Status.Parents = []gatewayv1.RouteParentStatus{{
		ParentRef:      ref,
		ControllerName: "example.net/gateway-controller",
		Conditions: []metav1.Condition{{
			Type: string(gatewayv1.RouteConditionAccepted), Status: status, Reason: reason, Message: "written by the test",
			ObservedGeneration: route.Generation, LastTransitionTime: metav1.Now(),
		}},
	}}
	if err := c.Client.Status().Patch(bg, &route, patch); err != nil {
		t.Fatal(err)
	}
}

// asController: the controller below runs with no more than what
// `backbone install` grants it.
func asController(t *testing.T, c *testenv.Cluster) *testenv.Cluster {
	return installtest.AsController(t, c)
}

// TestIngressTargetBecomesAnHTTPRoute runs the controller in ingress mode,
// then in httproute mode, then in ingress mode again, against a real API
// server with the Gateway API CRDs of the module backbone builds with.
func TestIngressTargetBecomesAnHTTPRoute(t *testing.T) {
	c := testenv.StartWith(t, testenv.Options{CRDPaths: testenv.GatewayAPICRDs(t)}, "platform")["platform"]
	ctl := asController(t, c)
	for _, ns := range []string{"services", "observability", "gateway-system"} {
		if err := c.CreateNamespace(ns); err != nil {
			t.Fatal(err)
		}
	}
	gw := &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Namespace: "gateway-system", Name: "public"},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: "example",
			Listeners: []gatewayv1.Listener{{
				Name: "https", Hostname: ptr.To(gatewayv1.Hostname("*.bank.example")), Port: 443, Protocol: gatewayv1.HTTPSProtocolType,
				TLS: &gatewayv1.ListenerTLSConfig{Mode: ptr.To(gatewayv1.TLSModeTerminate),
					CertificateRefs: []gatewayv1.SecretObjectReference{{Name: "wildcard-bank-example-tls"}}},
				AllowedRoutes: &gatewayv1.AllowedRoutes{Namespaces: &gatewayv1.RouteNamespaces{From: ptr.To(gatewayv1.NamespacesFromAll)}},
			}},
		},
	}
	if err := c.Client.Create(bg, gw); err != nil {
		t.Fatal(err)
	}
	// An Ingress that is not backbone's, named as a target's would be.
	foreign := &networkingv1.Ingress{
		ObjectMeta: metav1.ObjectMeta{Namespace: "services", Name: "service-a-services-west"},
		Spec:       networkingv1.IngressSpec{DefaultBackend: &networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{Name: "x", Port: networkingv1.ServiceBackendPort{Number: 80}}}},
	}
	if err := c.Client.Create(bg, foreign); err != nil {
		t.Fatal(err)
	}
	mk := func(name string, spec v1alpha1.IngressTargetSpec) {
		it := &v1alpha1.IngressTarget{ObjectMeta: metav1.ObjectMeta{Namespace: v1alpha1.SystemNamespace, Name: name}, Spec: spec}
		if err := c.Client.Create(bg, it); err != nil {
			t.Fatal(err)
		}
	}
	// Served here, default host.
	mk("log-collector-observability-platform", v1alpha1.IngressTargetSpec{Service: "log-collector", Namespace: "observability", Cluster: "platform", Squad: "platform", Port: 8080})
	// Exposed from here for west: the mirror is the backend.
	mk("service-a-services-west", v1alpha1.IngressTargetSpec{Service: "service-a", Namespace: "services", Cluster: "west", Squad: "nasa", Port: 3000, Host: "service-a.bank.example", ExposeFrom: "platform"})
	// Served by west's own controller.
	mk("service-b-services-west", v1alpha1.IngressTargetSpec{Service: "service-b", Namespace: "services", Cluster: "west", Squad: "nasa", Port: 80})

	// Ingress mode first.
	ingressOpts := targets.IngressOptions{Domain: "bank.example", ClusterIssuer: "letsencrypt-prod"}
	stop := start(t, ctl, controller.Options{Ingress: ingressOpts})
	collector := types.NamespacedName{Namespace: "observability", Name: "log-collector-observability-platform"}
	mirrored := types.NamespacedName{Namespace: "services", Name: "service-a-services-west"}
	eventually(t, "the log collector's Ingress", func() bool { return c.Client.Get(bg, collector, &networkingv1.Ingress{}) == nil })
	eventually(t, "the foreign Ingress reported", func() bool {
		r, _ := readyReason(t, c, mirrored.Name)
		return r == "IngressConflict"
	})
	stop()

	// httproute mode: routes replace backbone's Ingresses.
	routeOpts := ingressOpts
	routeOpts.Mode = targets.IngressModeHTTPRoute
	routeOpts.Gateway = targets.GatewayRef{Namespace: "gateway-system", Name: "public", SectionName: "https"}
	stop = start(t, ctl, controller.Options{Ingress: routeOpts})

	var route gatewayv1.HTTPRoute
	eventually(t, "the log collector's HTTPRoute", func() bool { return c.Client.Get(bg, collector, &route) == nil })
	host := "log-collector.platform.bank.example"
	wantParent := gatewayv1.ParentReference{
		Group: ptr.To(gatewayv1.Group("gateway.networking.k8s.io")), Kind: ptr.To(gatewayv1.Kind("Gateway")),
		Namespace: ptr.To(gatewayv1.Namespace("gateway-system")), Name: "public", SectionName: ptr.To(gatewayv1.SectionName("https")),
	}
	wantSpec := func(backend string, port int32, host string) gatewayv1.HTTPRouteSpec {
		return gatewayv1.HTTPRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{wantParent}},
			Hostnames:       []gatewayv1.Hostname{gatewayv1.Hostname(host)},
			Rules: []gatewayv1.HTTPRouteRule{{
				Matches: []gatewayv1.HTTPRouteMatch{{Path: &gatewayv1.HTTPPathMatch{Type: ptr.To(gatewayv1.PathMatchPathPrefix), Value: ptr.To("/")}}},
				BackendRefs: []gatewayv1.HTTPBackendRef{{BackendRef: gatewayv1.BackendRef{
					BackendObjectReference: gatewayv1.BackendObjectReference{
						Group: ptr.To(gatewayv1.Group("")), Kind: ptr.To(gatewayv1.Kind("Service")),
						Name: gatewayv1.ObjectName(backend), Port: ptr.To(port),
					},
					Weight: ptr.To[int32](1),
				}}},
			}},
		}
	}
	if !equality.Semantic.DeepEqual(route.Spec, wantSpec("log-collector", 8080, host)) {
		t.Fatalf("route spec\n%+v\nwant\n%+v", route.Spec, wantSpec("log-collector", 8080, host))
	}
	// Exactly the external-dns hostname annotations: no cert-manager
	// annotation (the Gateway holds TLS), no controller-specific one.
	wantAnn := map[string]string{
		"external-dns.kubernetes.io/hostname":       host,
		"external-dns.alpha.kubernetes.io/hostname": host,
	}
	if !maps.Equal(route.Annotations, wantAnn) {
		t.Fatalf("annotations %v, want exactly %v", route.Annotations, wantAnn)
	}
	wantLabels := map[string]string{targets.IngressTargetLabel: collector.Name, v1alpha1.ManagedByLabel: v1alpha1.ManagedByValue, v1alpha1.SquadLabel: "platform"}
	if !maps.Equal(route.Labels, wantLabels) {
		t.Fatalf("labels %v, want %v", route.Labels, wantLabels)
	}
	eventually(t, "backbone's Ingress removed after the switch", func() bool {
		return apierrors.IsNotFound(c.Client.Get(bg, collector, &networkingv1.Ingress{}))
	})

	// exposeFrom: the route points at the mirror.
	eventually(t, "the mirror's HTTPRoute", func() bool { return c.Client.Get(bg, mirrored, &route) == nil })
	if !equality.Semantic.DeepEqual(route.Spec, wantSpec("service-a-west", 3000, "service-a.bank.example")) {
		t.Fatalf("exposeFrom route spec %+v", route.Spec)
	}
	if err := c.Client.Get(bg, mirrored, &networkingv1.Ingress{}); err != nil {
		t.Fatalf("the Ingress that is not backbone's was removed: %v", err)
	}
	if err := c.Client.Get(bg, types.NamespacedName{Namespace: "services", Name: "service-b-services-west"}, &gatewayv1.HTTPRoute{}); !apierrors.IsNotFound(err) {
		t.Fatalf("an entry served by another cluster got a route here: %v", err)
	}
	for _, key := range []types.NamespacedName{collector, mirrored} {
		_ = c.Client.Get(bg, key, &route)
		for k := range route.Annotations {
			if _, ok := wantAnn[k]; !ok || strings.HasPrefix(k, "nginx.ingress.kubernetes.io/") {
				t.Fatalf("%s carries annotation %s", key, k)
			}
		}
	}

	// Not Ready until the Gateway accepts the route.
	eventually(t, "RoutePending before the Gateway wrote status", func() bool {
		r, st := readyReason(t, c, mirrored.Name)
		return r == "RoutePending" && st.Host == "service-a.bank.example"
	})
	time.Sleep(time.Second) // a reconcile that would wrongly set Ready has had time to
	if r, _ := readyReason(t, c, mirrored.Name); r != "RoutePending" {
		t.Fatalf("Ready reason %q before any acceptance", r)
	}
	// Another Gateway accepting it does not count.
	other := wantParent
	other.Name = "internal"
	acceptRoute(t, c, mirrored, other, metav1.ConditionTrue, "Accepted")
	time.Sleep(time.Second)
	if r, _ := readyReason(t, c, mirrored.Name); r != "RoutePending" {
		t.Fatalf("Ready reason %q after another Gateway's acceptance", r)
	}
	acceptRoute(t, c, mirrored, wantParent, metav1.ConditionFalse, "NotAllowedByListeners")
	eventually(t, "the refusal reported", func() bool {
		r, _ := readyReason(t, c, mirrored.Name)
		return r == "RouteNotAccepted"
	})
	acceptRoute(t, c, mirrored, wantParent, metav1.ConditionTrue, "Accepted")
	eventually(t, "Ready once the Gateway accepted the route", func() bool {
		var it v1alpha1.IngressTarget
		_ = c.Client.Get(bg, types.NamespacedName{Namespace: v1alpha1.SystemNamespace, Name: mirrored.Name}, &it)
		return meta.IsStatusConditionTrue(it.Status.Conditions, v1alpha1.ConditionReady)
	})
	if r, _ := readyReason(t, c, "log-collector-observability-platform"); r != "RoutePending" {
		t.Fatalf("the route nobody accepted is %q", r)
	}

	// The Gateway's published address reaches status.
	if err := c.Client.Get(bg, client.ObjectKeyFromObject(gw), gw); err != nil {
		t.Fatal(err)
	}
	gw.Status.Addresses = []gatewayv1.GatewayStatusAddress{{Type: ptr.To(gatewayv1.IPAddressType), Value: "203.0.113.20"}}
	if err := c.Client.Status().Update(bg, gw); err != nil {
		t.Fatal(err)
	}
	stop() // the Gateway is read, not watched: a restart reads it at once
	stop = start(t, ctl, controller.Options{Ingress: routeOpts})
	eventually(t, "the Gateway's address in status", func() bool {
		r, st := readyReason(t, c, mirrored.Name)
		return r == "Serving" && st.Address == "203.0.113.20"
	})

	// Deleting the target removes its route.
	it := &v1alpha1.IngressTarget{ObjectMeta: metav1.ObjectMeta{Namespace: v1alpha1.SystemNamespace, Name: collector.Name}}
	if err := c.Client.Delete(bg, it); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the route and the target gone", func() bool {
		e1 := c.Client.Get(bg, collector, &gatewayv1.HTTPRoute{})
		e2 := c.Client.Get(bg, client.ObjectKeyFromObject(it), &v1alpha1.IngressTarget{})
		return apierrors.IsNotFound(e1) && apierrors.IsNotFound(e2)
	})
	stop()

	// Back to ingress mode: the route goes once the Ingress is back. The
	// foreign Ingress still blocks service-a, so its route stays.
	// A route left from httproute mode, and its target.
	if err := c.Client.Create(bg, &gatewayv1.HTTPRoute{ObjectMeta: metav1.ObjectMeta{Namespace: collector.Namespace, Name: collector.Name,
		Labels: map[string]string{targets.IngressTargetLabel: collector.Name}}, Spec: wantSpec("log-collector", 8080, host)}); err != nil {
		t.Fatal(err)
	}
	mk("log-collector-observability-platform", v1alpha1.IngressTargetSpec{Service: "log-collector", Namespace: "observability", Cluster: "platform", Squad: "platform", Port: 8080})
	start(t, ctl, controller.Options{Ingress: ingressOpts})
	eventually(t, "the Ingress back and the left-over route removed", func() bool {
		return c.Client.Get(bg, collector, &networkingv1.Ingress{}) == nil &&
			apierrors.IsNotFound(c.Client.Get(bg, collector, &gatewayv1.HTTPRoute{}))
	})
	if err := c.Client.Get(bg, mirrored, &gatewayv1.HTTPRoute{}); err != nil {
		t.Fatalf("the route of a target whose Ingress is blocked was removed: %v", err)
	}
}
