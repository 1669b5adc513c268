package sandbox

import (
	"context"
	"fmt"
	"net/http"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
)

func ensureNamespace(ctx context.Context, c client.Client, name string) error {
	err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// registerService creates a Service without selector and the EndpointSlice
// that points it at a process the sandbox runs: what a Deployment and the
// EndpointSlice controller would do in a real cluster.
func registerService(ctx context.Context, c client.Client, svc *corev1.Service, ip string, ports map[string]int32) error {
	if err := ensureNamespace(ctx, c, svc.Namespace); err != nil {
		return err
	}
	if err := c.Create(ctx, svc); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating Service %s/%s: %w", svc.Namespace, svc.Name, err)
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name: svc.Name + "-sandbox", Namespace: svc.Namespace,
			Labels: map[string]string{discoveryv1.LabelServiceName: svc.Name, discoveryv1.LabelManagedBy: "backbone-sandbox"},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{
			Addresses:  []string{ip},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true)},
		}},
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

// registerGateway makes the gateway process the endpoint of the cluster's
// backbone-gateway Service, which the mirror controller copies into every
// mirror and `backbone link` reads.
func registerGateway(ctx context.Context, c client.Client, ip string, port int, identity string) error {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{
			Name: v1alpha1.GatewayServiceName, Namespace: v1alpha1.SystemNamespace,
			Annotations: map[string]string{v1alpha1.GatewayIdentityAnnotation: identity},
			Labels:      map[string]string{"app.kubernetes.io/name": "backbone-gateway"},
		},
		Spec: corev1.ServiceSpec{
			Ports: []corev1.ServicePort{{Name: v1alpha1.GatewayInboundPortName, Port: 4143, Protocol: corev1.ProtocolTCP}},
			// The sandbox has no load balancer: the gateway's own address
			// is the one peers dial.
			ExternalIPs: []string{ip},
		},
	}
	return registerService(ctx, c, svc, ip, map[string]int32{v1alpha1.GatewayInboundPortName: int32(port)})
}

func getOK(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}
