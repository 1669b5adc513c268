package targets_test

import (
	"context"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/config"
	"github.com/backbone-mesh/backbone/internal/controller"
	"github.com/backbone-mesh/backbone/internal/kube"
	"github.com/backbone-mesh/backbone/internal/mirror"
	"github.com/backbone-mesh/backbone/internal/targets"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

var bg = context.Background()

func run(t *testing.T, c *testenv.Cluster, opts controller.Options) {
	t.Helper()
	ctx, cancel := context.WithCancel(bg)
	done := make(chan error, 1)
	opts.ClusterName, opts.MetricsAddress, opts.HealthProbeAddress = c.Name, "0", "0"
	opts.Ports = mirror.PortRange{Low: 20000, High: 20999}
	go func() { done <- controller.Run(ctx, c.Config, opts) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("controller: %v", err)
		}
	})
}

func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestRenderedOutputAppliesWithoutDrift: what `backbone render` writes is
// accepted by a real API server, and applying it again changes nothing —
// Flux sees no drift.
func TestRenderedOutputAppliesWithoutDrift(t *testing.T) {
	c := testenv.Start(t, "east")["east"]
	paths := []string{"../config/testdata/seed.yaml", "../config/testdata/platform.yaml"}
	clusters := []string{"east", "west", "platform"}
	cfg, err := config.Load(paths, clusters)
	if err != nil {
		t.Fatal(err)
	}
	out, err := config.Render(cfg, clusters, config.RenderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	versions := func() map[string]string {
		got := map[string]string{}
		var ets v1alpha1.EgressTargetList
		var its v1alpha1.IngressTargetList
		if err := c.Client.List(bg, &ets); err != nil {
			t.Fatal(err)
		}
		if err := c.Client.List(bg, &its); err != nil {
			t.Fatal(err)
		}
		for _, o := range ets.Items {
			got["egress/"+o.Name] = o.ResourceVersion
		}
		for _, o := range its.Items {
			got["ingress/"+o.Name] = o.ResourceVersion
		}
		return got
	}
	// One API server stands for east and platform (west's objects would
	// share names with platform's: they live in different clusters).
	apply := func() {
		for _, cluster := range []string{"east", "platform"} {
			for name, b := range out[cluster] {
				if name == "kustomization.yaml" {
					continue
				}
				if err := kube.ApplyYAML(bg, c.Client, b, "kustomize-controller"); err != nil {
					t.Fatalf("%s/%s: %v", cluster, name, err)
				}
			}
		}
	}
	apply()
	first := versions()
	if len(first) != 4 {
		t.Fatalf("applied objects: %v", first)
	}
	apply()
	if second := versions(); !maps.Equal(first, second) {
		t.Fatalf("second apply changed objects: %v -> %v", first, second)
	}
	// The files on disk are what was applied.
	dir := t.TempDir()
	if err := config.Write(dir, out); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "east", "egresstarget-resource-a.yaml")); err != nil {
		t.Fatal(err)
	}
}

func TestEgressTargetBecomesAnExportedService(t *testing.T) {
	c := testenv.Start(t, "east")["east"]
	// The local gateway's endpoints.
	gw := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: v1alpha1.SystemNamespace, Name: v1alpha1.GatewayServiceName},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "inbound", Port: 4143}}}}
	if err := c.Client.Create(bg, gw); err != nil {
		t.Fatal(err)
	}
	gwSlice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: gw.Namespace, Name: "gw", Labels: map[string]string{discoveryv1.LabelServiceName: gw.Name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.1.0.7"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
	}
	if err := c.Client.Create(bg, gwSlice); err != nil {
		t.Fatal(err)
	}
	// A Service that is not backbone's, in the way of a target.
	if err := c.Client.Create(bg, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: v1alpha1.SystemNamespace, Name: "taken"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}}}); err != nil {
		t.Fatal(err)
	}
	run(t, c, controller.Options{})

	mk := func(name, env string, proto v1alpha1.EgressProtocol) *v1alpha1.EgressTarget {
		et := &v1alpha1.EgressTarget{ObjectMeta: metav1.ObjectMeta{Namespace: v1alpha1.SystemNamespace, Name: name},
			Spec: v1alpha1.EgressTargetSpec{HostName: name, DNSName: name + ".example.com", Environment: env, Squad: "maxus", Protocol: proto, Port: 5432}}
		if err := c.Client.Create(bg, et); err != nil {
			t.Fatal(err)
		}
		return et
	}
	mk("resource-a", "east", "")
	mk("ledger", "east", v1alpha1.EgressProtocolTLS)
	mk("elsewhere", "west", "")
	mk("taken", "east", "")

	ports := map[string]int{}
	for _, name := range []string{"resource-a", "ledger"} {
		var svc corev1.Service
		eventually(t, name+" Service", func() bool {
			return c.Client.Get(bg, types.NamespacedName{Namespace: v1alpha1.SystemNamespace, Name: name}, &svc) == nil
		})
		if svc.Labels[v1alpha1.ExportedLabel] != "true" || svc.Labels[targets.EgressTargetLabel] != name || svc.Labels[v1alpha1.SquadLabel] != "maxus" {
			t.Fatalf("%s labels: %v", name, svc.Labels)
		}
		if len(svc.OwnerReferences) != 1 || svc.OwnerReferences[0].Name != name || svc.OwnerReferences[0].Kind != "EgressTarget" {
			t.Fatalf("%s owner references: %v", name, svc.OwnerReferences)
		}
		p, err := strconv.Atoi(svc.Annotations[targets.EgressPortAnnotation])
		if err != nil || p < 30000 || p > 30999 {
			t.Fatalf("%s egress port %q", name, svc.Annotations[targets.EgressPortAnnotation])
		}
		ports[name] = p
		var sl discoveryv1.EndpointSlice
		eventually(t, name+" EndpointSlice on the gateway", func() bool {
			if c.Client.Get(bg, types.NamespacedName{Namespace: v1alpha1.SystemNamespace, Name: name + "-egress"}, &sl) != nil {
				return false
			}
			return len(sl.Endpoints) == 1 && sl.Endpoints[0].Addresses[0] == "10.1.0.7" && len(sl.Ports) == 1 && int(*sl.Ports[0].Port) == p
		})
		if len(sl.OwnerReferences) != 1 {
			t.Fatalf("%s slice owner references: %v", name, sl.OwnerReferences)
		}
	}
	if ports["resource-a"] == ports["ledger"] {
		t.Fatalf("two targets share gateway port %d", ports["ledger"])
	}
	var svc corev1.Service
	_ = c.Client.Get(bg, types.NamespacedName{Namespace: v1alpha1.SystemNamespace, Name: "resource-a"}, &svc)
	if p := svc.Spec.Ports[0]; p.Name != "http" || p.Port != 80 {
		t.Fatalf("https target's Service port %+v, want http/80 (the gateway originates TLS)", p)
	}
	_ = c.Client.Get(bg, types.NamespacedName{Namespace: v1alpha1.SystemNamespace, Name: "ledger"}, &svc)
	if p := svc.Spec.Ports[0]; p.Name != "tls" || p.Port != 5432 {
		t.Fatalf("tls target's Service port %+v, want tls/5432", p)
	}

	reason := func(name string) string {
		var et v1alpha1.EgressTarget
		if c.Client.Get(bg, types.NamespacedName{Namespace: v1alpha1.SystemNamespace, Name: name}, &et) != nil {
			return ""
		}
		if cond := meta.FindStatusCondition(et.Status.Conditions, v1alpha1.ConditionReady); cond != nil {
			return cond.Reason
		}
		return ""
	}
	eventually(t, "the other environment's target reported", func() bool { return reason("elsewhere") == "OtherEnvironment" })
	eventually(t, "the conflicting Service reported", func() bool { return reason("taken") == "ServiceConflict" })
	// The gateways probe; no gateway runs at 10.1.0.7 to report.
	eventually(t, "the target without gateway reports reported", func() bool { return reason("resource-a") == "ProbeUnavailable" })
	if err := c.Client.Get(bg, types.NamespacedName{Namespace: v1alpha1.SystemNamespace, Name: "elsewhere"}, &corev1.Service{}); !apierrors.IsNotFound(err) {
		t.Fatalf("a target of another environment got a Service here: %v", err)
	}
	var taken corev1.Service
	_ = c.Client.Get(bg, types.NamespacedName{Namespace: v1alpha1.SystemNamespace, Name: "taken"}, &taken)
	if len(taken.Labels) != 0 || len(taken.Annotations) != 0 {
		t.Fatalf("the Service that is not backbone's was changed: %v %v", taken.Labels, taken.Annotations)
	}
}

func TestIngressTargetBecomesAnIngress(t *testing.T) {
	c := testenv.Start(t, "platform")["platform"]
	// Without the Gateway API CRDs, httproute mode refuses to start.
	err := controller.Run(bg, c.Config, controller.Options{ClusterName: c.Name, MetricsAddress: "0", HealthProbeAddress: "0",
		Ingress: targets.IngressOptions{Mode: targets.IngressModeHTTPRoute, Gateway: targets.GatewayRef{Namespace: "gateway-system", Name: "public"}}})
	if err == nil || !strings.Contains(err.Error(), "Gateway API CRDs") {
		t.Fatalf("httproute mode without the CRDs: %v", err)
	}
	for _, ns := range []string{"services", "observability"} {
		if err := c.CreateNamespace(ns); err != nil {
			t.Fatal(err)
		}
	}
	run(t, c, controller.Options{Ingress: targets.IngressOptions{Domain: "bank.example", ClusterIssuer: "letsencrypt-prod"}})

	mk := func(name string, spec v1alpha1.IngressTargetSpec) {
		it := &v1alpha1.IngressTarget{ObjectMeta: metav1.ObjectMeta{Namespace: v1alpha1.SystemNamespace, Name: name}, Spec: spec}
		if err := c.Client.Create(bg, it); err != nil {
			t.Fatal(err)
		}
	}
	// Served here, default host.
	mk("log-collector-observability-platform", v1alpha1.IngressTargetSpec{Service: "log-collector", Namespace: "observability", Cluster: "platform", Squad: "platform", Port: 8080})
	// Exposed from here for west: points at the mirror. The host holds
	// what would be an nginx snippet if it were ever copied into one.
	mk("service-a-services-west", v1alpha1.IngressTargetSpec{Service: "service-a", Namespace: "services", Cluster: "west", Squad: "nasa", Port: 3000, Host: "service-a.bank.example", ExposeFrom: "platform"})
	// Served by west's own controller, not here.
	mk("service-b-services-west", v1alpha1.IngressTargetSpec{Service: "service-b", Namespace: "services", Cluster: "west", Squad: "nasa", Port: 80})

	var ing networkingv1.Ingress
	eventually(t, "the log collector's Ingress", func() bool {
		return c.Client.Get(bg, types.NamespacedName{Namespace: "observability", Name: "log-collector-observability-platform"}, &ing) == nil
	})
	host := "log-collector.platform.bank.example"
	wantAnn := map[string]string{
		"cert-manager.io/cluster-issuer":            "letsencrypt-prod",
		"external-dns.kubernetes.io/hostname":       host,
		"external-dns.alpha.kubernetes.io/hostname": host,
	}
	if !maps.Equal(ing.Annotations, wantAnn) {
		t.Fatalf("annotations %v, want exactly %v", ing.Annotations, wantAnn)
	}
	if *ing.Spec.IngressClassName != "nginx" || ing.Spec.Rules[0].Host != host ||
		ing.Spec.TLS[0].Hosts[0] != host || ing.Spec.TLS[0].SecretName != "log-collector-platform-bank-example-tls" {
		t.Fatalf("ingress spec %+v", ing.Spec)
	}
	if b := ing.Spec.Rules[0].HTTP.Paths[0].Backend.Service; b.Name != "log-collector" || b.Port.Number != 8080 {
		t.Fatalf("backend %+v", b)
	}
	eventually(t, "the mirror's Ingress", func() bool {
		return c.Client.Get(bg, types.NamespacedName{Namespace: "services", Name: "service-a-services-west"}, &ing) == nil
	})
	if b := ing.Spec.Rules[0].HTTP.Paths[0].Backend.Service; b.Name != "service-a-west" || ing.Spec.Rules[0].Host != "service-a.bank.example" {
		t.Fatalf("exposeFrom backend %+v host %s", b, ing.Spec.Rules[0].Host)
	}
	eventually(t, "Ready with the host in status", func() bool {
		var it v1alpha1.IngressTarget
		_ = c.Client.Get(bg, types.NamespacedName{Namespace: v1alpha1.SystemNamespace, Name: "service-a-services-west"}, &it)
		return meta.IsStatusConditionTrue(it.Status.Conditions, v1alpha1.ConditionReady) && it.Status.Host == "service-a.bank.example"
	})
	// The ingress controller publishes an address; status carries it.
	ing.Status.LoadBalancer.Ingress = []networkingv1.IngressLoadBalancerIngress{{IP: "203.0.113.10"}}
	if err := c.Client.Status().Update(bg, &ing); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the published address in status", func() bool {
		var it v1alpha1.IngressTarget
		_ = c.Client.Get(bg, types.NamespacedName{Namespace: v1alpha1.SystemNamespace, Name: "service-a-services-west"}, &it)
		return it.Status.Address == "203.0.113.10"
	})
	if err := c.Client.Get(bg, types.NamespacedName{Namespace: "services", Name: "service-b-services-west"}, &networkingv1.Ingress{}); !apierrors.IsNotFound(err) {
		t.Fatalf("an entry served by another cluster got an Ingress here: %v", err)
	}

	// Two hosts whose usual Secret names (dots turned to dashes) are one:
	// the target that claimed it first keeps the usual name, the other
	// gets a name of its own — never one certificate for both.
	mk("ab-one", v1alpha1.IngressTargetSpec{Service: "ab", Namespace: "services", Cluster: "platform", Squad: "nasa", Port: 80, Host: "a-b.bank.example"})
	mk("ab-two", v1alpha1.IngressTargetSpec{Service: "ab", Namespace: "services", Cluster: "platform", Squad: "nasa", Port: 80, Host: "a.b-bank.example"})
	secrets := map[string]string{}
	eventually(t, "both hosts' Ingresses", func() bool {
		for _, name := range []string{"ab-one", "ab-two"} {
			var ing networkingv1.Ingress
			if c.Client.Get(bg, types.NamespacedName{Namespace: "services", Name: name}, &ing) != nil {
				return false
			}
			secrets[name] = ing.Spec.TLS[0].SecretName
		}
		return true
	})
	if secrets["ab-one"] != "a-b-bank-example-tls" || secrets["ab-one"] == secrets["ab-two"] {
		t.Errorf("secret names %v: want the first target's usual a-b-bank-example-tls and another for the second", secrets)
	}

	// Deleting the target removes its Ingress (a finalizer: owner
	// references cannot cross namespaces).
	it := &v1alpha1.IngressTarget{ObjectMeta: metav1.ObjectMeta{Namespace: v1alpha1.SystemNamespace, Name: "log-collector-observability-platform"}}
	if err := c.Client.Delete(bg, it); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the Ingress and the target gone", func() bool {
		e1 := c.Client.Get(bg, types.NamespacedName{Namespace: "observability", Name: it.Name}, &networkingv1.Ingress{})
		e2 := c.Client.Get(bg, client.ObjectKeyFromObject(it), &v1alpha1.IngressTarget{})
		return apierrors.IsNotFound(e1) && apierrors.IsNotFound(e2)
	})
}
