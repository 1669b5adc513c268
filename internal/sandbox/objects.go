package sandbox

import (
	"context"
	"fmt"
	"net/http"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/kube"
)

// registerService points a Service at a process the sandbox runs.
func registerService(ctx context.Context, c client.Client, svc *corev1.Service, ip string, ports map[string]int32) error {
	return kube.RegisterService(ctx, c, svc, []string{ip}, ports, "backbone-sandbox")
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
	resp, err := directClient.Do(req)
	if err != nil {
		return err
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}
