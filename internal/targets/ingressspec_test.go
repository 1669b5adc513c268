package targets_test

import (
	"strings"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/controller"
	"github.com/backbone-mesh/backbone/internal/targets"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

// reconcileErrors is how many reconciles of the named controller (of
// every test in the process) returned an error.
func reconcileErrors(t *testing.T, name string) float64 {
	t.Helper()
	families, err := ctrlmetrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "controller_runtime_reconcile_errors_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "controller" && l.GetValue() == name {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func createIngressTarget(t *testing.T, c *testenv.Cluster, name string, spec v1alpha1.IngressTargetSpec) *v1alpha1.IngressTarget {
	t.Helper()
	it := &v1alpha1.IngressTarget{ObjectMeta: metav1.ObjectMeta{Namespace: v1alpha1.SystemNamespace, Name: name}, Spec: spec}
	if err := c.Client.Create(bg, it); err != nil {
		t.Fatal(err)
	}
	return it
}

func ingressReady(c *testenv.Cluster, name string) *metav1.Condition {
	var it v1alpha1.IngressTarget
	if c.Client.Get(bg, systemKey(name), &it) != nil {
		return nil
	}
	cond := meta.FindStatusCondition(it.Status.Conditions, v1alpha1.ConditionReady)
	if cond == nil || cond.ObservedGeneration != it.Generation {
		return nil
	}
	return cond
}

func startIngressCluster(t *testing.T, namespaces ...string) *testenv.Cluster {
	t.Helper()
	c := testenv.Start(t, "platform")["platform"]
	for _, ns := range namespaces {
		if err := c.CreateNamespace(ns); err != nil {
			t.Fatal(err)
		}
	}
	start(t, asController(t, c), controller.Options{Ingress: targets.IngressOptions{Domain: "bank.example", ClusterIssuer: "letsencrypt-prod"}})
	return c
}

// TestAnIngressTheAPIServerRefusesIsReportedOnce: the mirror of a Service
// with a long name from a cluster with a long name is no valid backend
// name; the API server refuses the Ingress. The target says so, naming the
// field, and is not retried until something changes — a retry would be
// refused the same way.
func TestAnIngressTheAPIServerRefusesIsReportedOnce(t *testing.T) {
	c := startIngressCluster(t, "services")
	service := strings.Repeat("ledger", 10) // 60 characters; the mirror, -west, 65
	createIngressTarget(t, c, "long-ledger", v1alpha1.IngressTargetSpec{Service: service, Namespace: "services", Cluster: "west",
		ExposeFrom: "platform", Squad: "nasa", Port: 80, Host: "ledger.bank.example"})
	var cond *metav1.Condition
	eventually(t, "the refusal reported", func() bool {
		cond = ingressReady(c, "long-ledger")
		return cond != nil && cond.Status == metav1.ConditionFalse && cond.Reason == "IngressInvalid"
	})
	if !strings.Contains(cond.Message, "backend.service.name") || !strings.Contains(cond.Message, "spec.service") {
		t.Fatalf("the message names neither the Ingress's field nor the target's: %s", cond.Message)
	}
	var it v1alpha1.IngressTarget
	if err := c.Client.Get(bg, systemKey("long-ledger"), &it); err != nil {
		t.Fatal(err)
	}
	errs := reconcileErrors(t, "ingresstarget")
	time.Sleep(2 * time.Second) // a retry loop would have run a few times
	if now := reconcileErrors(t, "ingresstarget"); now != errs {
		t.Fatalf("%v failed reconciles while nothing changed", now-errs)
	}
	var again v1alpha1.IngressTarget
	if err := c.Client.Get(bg, systemKey("long-ledger"), &again); err != nil || again.ResourceVersion != it.ResourceVersion {
		t.Fatalf("the target was written again while nothing changed: %v", err)
	}
	if err := c.Client.Get(bg, types.NamespacedName{Namespace: "services", Name: "long-ledger"}, &networkingv1.Ingress{}); !apierrors.IsNotFound(err) {
		t.Fatalf("an Ingress exists: %v", err)
	}
}

// TestTwoIngressTargetsClaimingOneHost: the younger is not served and
// names the older; once the older is gone, the younger is served.
func TestTwoIngressTargetsClaimingOneHost(t *testing.T) {
	c := startIngressCluster(t, "services")
	spec := func(service string) v1alpha1.IngressTargetSpec {
		return v1alpha1.IngressTargetSpec{Service: service, Namespace: "services", Cluster: "platform", Squad: "nasa", Port: 80, Host: "shared.bank.example"}
	}
	// The oldest, on another host for now.
	mikeSpec := spec("mike")
	mikeSpec.Host = "other.bank.example"
	mike := createIngressTarget(t, c, "mike", mikeSpec)
	time.Sleep(1100 * time.Millisecond) // creation timestamps count seconds
	// By name, alpha would come first: the older must win however the
	// names sort.
	older := createIngressTarget(t, c, "zulu", spec("zulu"))
	eventually(t, "the older target served", func() bool {
		cond := ingressReady(c, "zulu")
		return cond != nil && cond.Reason == "Serving"
	})
	time.Sleep(1100 * time.Millisecond) // creation timestamps count seconds
	createIngressTarget(t, c, "alpha", spec("alpha"))
	eventually(t, "the younger target reported", func() bool {
		cond := ingressReady(c, "alpha")
		return cond != nil && cond.Status == metav1.ConditionFalse && cond.Reason == "HostConflict" && strings.Contains(cond.Message, "zulu")
	})
	if err := c.Client.Get(bg, types.NamespacedName{Namespace: "services", Name: "alpha"}, &networkingv1.Ingress{}); !apierrors.IsNotFound(err) {
		t.Fatalf("the younger target got an Ingress for the host: %v", err)
	}
	if cond := ingressReady(c, "zulu"); cond == nil || cond.Reason != "Serving" {
		t.Fatalf("the older target: %+v", cond)
	}

	if err := c.Client.Delete(bg, older); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the younger target served once the older is gone", func() bool {
		cond := ingressReady(c, "alpha")
		return cond != nil && cond.Reason == "Serving" &&
			c.Client.Get(bg, types.NamespacedName{Namespace: "services", Name: "alpha"}, &networkingv1.Ingress{}) == nil
	})

	// An edit never takes a live host: the oldest target moved onto it
	// waits, and the one serving it goes on.
	if err := c.Client.Get(bg, systemKey("mike"), mike); err != nil {
		t.Fatal(err)
	}
	mike.Spec.Host = "shared.bank.example"
	if err := c.Client.Update(bg, mike); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the edited target reported", func() bool {
		cond := ingressReady(c, "mike")
		return cond != nil && cond.Reason == "HostConflict" && strings.Contains(cond.Message, "alpha")
	})
	time.Sleep(time.Second)
	if cond := ingressReady(c, "alpha"); cond == nil || cond.Reason != "Serving" ||
		c.Client.Get(bg, types.NamespacedName{Namespace: "services", Name: "alpha"}, &networkingv1.Ingress{}) != nil {
		t.Fatalf("the serving target lost its host to an edit: %+v", cond)
	}
}

// TestMovingAnIngressTargetToAnotherNamespaceRemovesItsOldIngress: the
// Ingress follows spec.namespace, and the one in the old namespace — which
// would go on publishing the host — goes.
func TestMovingAnIngressTargetToAnotherNamespaceRemovesItsOldIngress(t *testing.T) {
	c := startIngressCluster(t, "services", "payments")
	it := createIngressTarget(t, c, "ledger", v1alpha1.IngressTargetSpec{Service: "ledger", Namespace: "services", Cluster: "platform", Squad: "nasa", Port: 80})
	oldKey := types.NamespacedName{Namespace: "services", Name: "ledger"}
	eventually(t, "the Ingress", func() bool { return c.Client.Get(bg, oldKey, &networkingv1.Ingress{}) == nil })
	if err := c.Client.Get(bg, systemKey("ledger"), it); err != nil {
		t.Fatal(err)
	}
	it.Spec.Namespace = "payments"
	if err := c.Client.Update(bg, it); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the Ingress in the new namespace, none in the old", func() bool {
		return c.Client.Get(bg, types.NamespacedName{Namespace: "payments", Name: "ledger"}, &networkingv1.Ingress{}) == nil &&
			apierrors.IsNotFound(c.Client.Get(bg, oldKey, &networkingv1.Ingress{}))
	})
}
