package export_test

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/controller"
	"github.com/backbone-mesh/backbone/internal/mirror"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

var bg = context.Background()

// TestServiceExportStatus: the exporting cluster's controller tells the
// owner of each ServiceExport whether it works, with the MCS API's
// conditions and reasons, follows its Service, and stops writing once
// the status is right.
func TestServiceExportStatus(t *testing.T) {
	c := testenv.Start(t, "east")["east"]
	if err := c.CreateNamespace("shop"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(bg)
	done := make(chan error, 1)
	go func() {
		done <- controller.Run(ctx, c.Config, controller.Options{ClusterName: "east", MetricsAddress: "0", HealthProbeAddress: "0",
			Ports: mirror.PortRange{Low: 20000, High: 20999}})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("controller: %v", err)
		}
	})

	export := func(name string) {
		t.Helper()
		if err := c.Client.Create(bg, &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name}}); err != nil {
			t.Fatal(err)
		}
	}
	type want struct {
		valid, ready metav1.ConditionStatus
		reason       string // of Valid
		mentions     string // in Ready's message
	}
	expect := func(name string, w want) *mcsv1beta1.ServiceExport {
		t.Helper()
		var se mcsv1beta1.ServiceExport
		var last string
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			if err := c.Client.Get(bg, client.ObjectKey{Namespace: "shop", Name: name}, &se); err != nil {
				t.Fatal(err)
			}
			v := meta.FindStatusCondition(se.Status.Conditions, string(mcsv1beta1.ServiceExportConditionValid))
			r := meta.FindStatusCondition(se.Status.Conditions, string(mcsv1beta1.ServiceExportConditionReady))
			k := meta.FindStatusCondition(se.Status.Conditions, string(mcsv1beta1.ServiceExportConditionConflict))
			if v != nil && r != nil && k != nil {
				last = v.Reason + "/" + string(v.Status) + " " + string(r.Status) + ": " + r.Message
				if v.Status == w.valid && v.Reason == w.reason && r.Status == w.ready && strings.Contains(r.Message, w.mentions) &&
					k.Status == metav1.ConditionFalse && v.ObservedGeneration == se.Generation {
					return &se
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("ServiceExport shop/%s: want Valid=%s (%s), Ready=%s mentioning %q, Conflict=False; last seen %q", name, w.valid, w.reason, w.ready, w.mentions, last)
			}
		}
	}

	export("cart")
	expect("cart", want{metav1.ConditionFalse, metav1.ConditionFalse, string(mcsv1beta1.ServiceExportReasonNoService), "no Service shop/cart"})
	if err := c.Client.Create(bg, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cart"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}); err != nil {
		t.Fatal(err)
	}
	se := expect("cart", want{metav1.ConditionTrue, metav1.ConditionTrue, string(mcsv1beta1.ServiceExportReasonValid), "shop/cart-east"})

	if err := c.Client.Create(bg, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "legacy"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "legacy.example.com"}}); err != nil {
		t.Fatal(err)
	}
	export("legacy")
	expect("legacy", want{metav1.ConditionFalse, metav1.ConditionFalse, string(mcsv1beta1.ServiceExportReasonInvalidServiceType), "ExternalName"})

	if err := c.Client.Create(bg, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "db-west",
		Labels: map[string]string{v1alpha1.MirroredFromLabel: "west", v1alpha1.ManagedByLabel: v1alpha1.ManagedByValue}},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "pg", Port: 5432}}}}); err != nil {
		t.Fatal(err)
	}
	export("db-west")
	expect("db-west", want{metav1.ConditionFalse, metav1.ConditionFalse, string(mcsv1beta1.ServiceExportReasonInvalidServiceType), "mirror of a service of cluster west"})

	// A Service no gateway can carry is not Ready anywhere.
	if err := c.Client.Create(bg, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "dns"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}}}}); err != nil {
		t.Fatal(err)
	}
	export("dns")
	expect("dns", want{metav1.ConditionFalse, metav1.ConditionFalse, string(mcsv1beta1.ServiceExportReasonInvalidServiceType), "no TCP port"})

	// The Service goes: the export says so.
	if err := c.Client.Delete(bg, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cart"}}); err != nil {
		t.Fatal(err)
	}
	expect("cart", want{metav1.ConditionFalse, metav1.ConditionFalse, string(mcsv1beta1.ServiceExportReasonNoService), "no Service shop/cart"})
	valid := meta.FindStatusCondition(se.Status.Conditions, string(mcsv1beta1.ServiceExportConditionValid))

	// Settled: no more writes.
	var before mcsv1beta1.ServiceExport
	if err := c.Client.Get(bg, client.ObjectKey{Namespace: "shop", Name: "legacy"}, &before); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	var after mcsv1beta1.ServiceExport
	if err := c.Client.Get(bg, client.ObjectKey{Namespace: "shop", Name: "legacy"}, &after); err != nil {
		t.Fatal(err)
	}
	if after.ResourceVersion != before.ResourceVersion {
		t.Errorf("a settled ServiceExport was written again (%s -> %s)", before.ResourceVersion, after.ResourceVersion)
	}
	if valid.LastTransitionTime.IsZero() {
		t.Error("Valid has no lastTransitionTime")
	}
}
