package e2e

import (
	"context"
	"net"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/backbone-mesh/backbone/internal/testenv"
)

// TestNetnsAddressesAreAcceptedAsEndpoints checks the harness itself: a
// cluster starts inside the private namespace, accepts an EndpointSlice
// that points at a namespace address, and a listener on that address is
// reachable.
func TestNetnsAddressesAreAcceptedAsEndpoints(t *testing.T) {
	testenv.RequireNetns(t)
	l := testenv.ListenNetns(t, 2)
	go func() {
		c, err := l.Accept()
		if err == nil {
			_, _ = c.Write([]byte("ok"))
			_ = c.Close()
		}
	}()
	east := testenv.Start(t, "east")["east"]
	ctx := context.Background()
	addr := l.Addr().(*net.TCPAddr)
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name: "backend", Namespace: "default",
			Labels: map[string]string{discoveryv1.LabelServiceName: "backend"},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{addr.IP.String()}}},
		Ports:       []discoveryv1.EndpointPort{{Port: ptr.To(int32(addr.Port)), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	if err := east.Client.Create(ctx, slice); err != nil {
		t.Fatalf("the API server refused a namespace address: %v", err)
	}
	conn, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	buf := make([]byte, 2)
	if _, err := conn.Read(buf); err != nil || string(buf) != "ok" {
		t.Fatalf("read %q, %v", buf, err)
	}
}
