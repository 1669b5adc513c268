package testenv

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
)

// ReplaceGateway gives the cluster a gateway Service of the single IP
// family and an EndpointSlice of that family with one ready endpoint at
// addr, replacing the Service and slices there were: what the cluster's
// EndpointSlice controller leaves after the Service is made anew.
func (c *Cluster) ReplaceGateway(t testing.TB, family corev1.IPFamily, addr string) {
	t.Helper()
	ctx := context.Background()
	key := types.NamespacedName{Namespace: v1alpha1.SystemNamespace, Name: v1alpha1.GatewayServiceName}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}}
	if err := c.Client.Delete(ctx, svc); client.IgnoreNotFound(err) != nil {
		t.Fatal(err)
	}
	if err := c.Client.DeleteAllOf(ctx, &discoveryv1.EndpointSlice{}, client.InNamespace(key.Namespace),
		client.MatchingLabels{discoveryv1.LabelServiceName: key.Name}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		err := c.Client.Get(ctx, key, &corev1.Service{})
		if apierrors.IsNotFound(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the gateway Service is not gone: %v", err)
		}
	}
	svc.Spec = corev1.ServiceSpec{
		IPFamilies: []corev1.IPFamily{family}, IPFamilyPolicy: ptr.To(corev1.IPFamilyPolicySingleStack),
		Ports: []corev1.ServicePort{{Name: "inbound", Port: 4143}},
	}
	if err := c.Client.Create(ctx, svc); err != nil {
		t.Fatal(err)
	}
	addressType := discoveryv1.AddressTypeIPv4
	if family == corev1.IPv6Protocol {
		addressType = discoveryv1.AddressTypeIPv6
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name + "-" + strings.ToLower(string(family)),
			Labels: map[string]string{discoveryv1.LabelServiceName: key.Name}},
		AddressType: addressType,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{addr}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
	}
	if err := c.Client.Create(ctx, slice); err != nil {
		t.Fatal(err)
	}
}
