package mirror

import (
	"context"
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

// TestARefusedMirrorGetsNoSlice: a user's Service that takes a mirror's
// name after the plan was made refuses the mirror's create; the mirror's
// slice, which names its Service, must not be created either — it would
// give the user's Service the gateway's endpoints.
func TestARefusedMirrorGetsNoSlice(t *testing.T) {
	west := testenv.Start(t, "west")["west"]
	if err := west.CreateNamespace("shop"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	user := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cart-east"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}}}
	if err := west.Client.Create(ctx, user); err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{v1alpha1.ManagedByLabel: v1alpha1.ManagedByValue, v1alpha1.MirroredFromLabel: "east"}
	mirror := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cart-east", Labels: labels},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}}}
	other := mirror.DeepCopy()
	other.Name = "pay-east"
	slice := func(name string) *discoveryv1.EndpointSlice {
		l := map[string]string{discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: v1alpha1.EndpointSliceManagedBy,
			v1alpha1.MirroredFromLabel: "east"}
		return &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name, Labels: l},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"192.0.2.2"}}},
			Ports:       []discoveryv1.EndpointPort{{Port: ptr.To[int32](20000), Protocol: ptr.To(corev1.ProtocolTCP)}}}
	}
	r := &Reconciler{client: west.Client, opts: Options{Metrics: NewMetrics(prometheus.NewRegistry()), Parallelism: 4}}
	err := r.apply(ctx, &Plan{
		CreateServices: []*corev1.Service{mirror, other},
		CreateSlices:   []*discoveryv1.EndpointSlice{slice("cart-east"), slice("pay-east")},
	})
	if !apierrors.IsAlreadyExists(err) {
		t.Fatalf("apply: %v, want the refused create", err)
	}
	var rej rejectedWrites
	if !errors.As(err, &rej) || !staleCache(err) {
		t.Errorf("a create refused as already there is a stale cache's: %v", err)
	}
	if err := west.Client.Get(ctx, client.ObjectKey{Namespace: "shop", Name: "cart-east"}, &discoveryv1.EndpointSlice{}); !apierrors.IsNotFound(err) {
		t.Errorf("the refused mirror's slice: %v, want none (the user's Service would get the gateway's endpoints)", err)
	}
	if err := west.Client.Get(ctx, client.ObjectKey{Namespace: "shop", Name: "pay-east"}, &discoveryv1.EndpointSlice{}); err != nil {
		t.Errorf("the other mirror's slice: %v", err)
	}
	invalid := apierrors.NewInvalid(schema.GroupKind{Kind: "Service"}, "x", nil)
	if staleCache(rejectedWrites{apierrors.NewConflict(schema.GroupResource{Resource: "services"}, "y", nil), invalid}) {
		t.Error("an invalid write among conflicts taken for a stale cache")
	}
}
