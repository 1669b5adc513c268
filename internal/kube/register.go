package kube

import (
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// EnsureNamespace creates the namespace unless it exists.
func EnsureNamespace(ctx context.Context, c client.Client, name string) error {
	err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// RegisterService creates a Service without a selector and an
// EndpointSlice (named <service>-<manager>, managed by manager) pointing it
// at processes on addrs — what a Deployment and the EndpointSlice
// controller would do in a real cluster, for the sandbox, the bench and
// tests, which run workloads as local processes. The Service (unless it
// names its families) and the slice are IPv6 when the addresses are (all
// of one family). ports maps each Service
// port name to the port the processes listen on. Existing objects are
// left as they are.
func RegisterService(ctx context.Context, c client.Client, svc *corev1.Service, addrs []string, ports map[string]int32, manager string) error {
	if err := EnsureNamespace(ctx, c, svc.Namespace); err != nil {
		return err
	}
	family := corev1.IPv4Protocol
	if len(addrs) > 0 && strings.Contains(addrs[0], ":") {
		family = corev1.IPv6Protocol
	}
	if len(svc.Spec.IPFamilies) == 0 && len(addrs) > 0 {
		// Of the processes' family, whatever the cluster's first: a
		// gateway Service's family is the one its mirrors take.
		svc.Spec.IPFamilies = []corev1.IPFamily{family}
		svc.Spec.IPFamilyPolicy = ptr.To(corev1.IPFamilyPolicySingleStack)
	}
	if err := c.Create(ctx, svc); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating Service %s/%s: %w", svc.Namespace, svc.Name, err)
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name: svc.Name + "-" + manager, Namespace: svc.Namespace,
			Labels: map[string]string{discoveryv1.LabelServiceName: svc.Name, discoveryv1.LabelManagedBy: manager},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	if family == corev1.IPv6Protocol {
		slice.AddressType = discoveryv1.AddressTypeIPv6
	}
	if svc.Spec.ClusterIP == corev1.ClusterIPNone {
		slice.Labels[corev1.IsHeadlessService] = "" // as the EndpointSlice controller labels them
	}
	for _, a := range addrs {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{a},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true)},
		})
	}
	for _, p := range svc.Spec.Ports {
		slice.Ports = append(slice.Ports, discoveryv1.EndpointPort{
			Name: ptr.To(p.Name), Port: ptr.To(ports[p.Name]), Protocol: ptr.To(corev1.ProtocolTCP),
		})
	}
	if err := c.Create(ctx, slice); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating EndpointSlice %s/%s: %w", slice.Namespace, slice.Name, err)
	}
	return nil
}
