package targets_test

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/controller"
	"github.com/backbone-mesh/backbone/internal/targets"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

// withGateway gives the cluster a local gateway with one ready endpoint
// (nothing answers there: targets settle on ProbeUnavailable).
func withGateway(t *testing.T, c *testenv.Cluster) {
	t.Helper()
	gw := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: v1alpha1.SystemNamespace, Name: v1alpha1.GatewayServiceName},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "inbound", Port: 4143}}}}
	if err := c.Client.Create(bg, gw); err != nil {
		t.Fatal(err)
	}
	if err := c.Client.Create(bg, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: gw.Namespace, Name: "gw", Labels: map[string]string{discoveryv1.LabelServiceName: gw.Name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.1.0.7"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
	}); err != nil {
		t.Fatal(err)
	}
}

func createEgressTarget(t *testing.T, c *testenv.Cluster, name string, mutate ...func(*v1alpha1.EgressTargetSpec)) *v1alpha1.EgressTarget {
	t.Helper()
	et := &v1alpha1.EgressTarget{ObjectMeta: metav1.ObjectMeta{Namespace: v1alpha1.SystemNamespace, Name: name},
		Spec: v1alpha1.EgressTargetSpec{HostName: name, DNSName: name + ".example.com", Environment: "east", Squad: "maxus"}}
	for _, m := range mutate {
		m(&et.Spec)
	}
	if err := c.Client.Create(bg, et); err != nil {
		t.Fatal(err)
	}
	return et
}

// egressReady is the Ready condition of an EgressTarget, once it
// describes the target's current generation.
func egressReady(c *testenv.Cluster, name string) *metav1.Condition {
	var et v1alpha1.EgressTarget
	if c.Client.Get(bg, types.NamespacedName{Namespace: v1alpha1.SystemNamespace, Name: name}, &et) != nil {
		return nil
	}
	cond := meta.FindStatusCondition(et.Status.Conditions, v1alpha1.ConditionReady)
	if cond == nil || cond.ObservedGeneration != et.Generation {
		return nil
	}
	return cond
}

// egressPorts reads the gateway port of a target's Service and of its
// EndpointSlice; 0 for one that does not exist (yet).
func egressPorts(c *testenv.Cluster, hostName string) (service, slice int32) {
	var svc corev1.Service
	if c.Client.Get(bg, types.NamespacedName{Namespace: v1alpha1.SystemNamespace, Name: hostName}, &svc) == nil {
		p, _ := strconv.Atoi(svc.Annotations[targets.EgressPortAnnotation])
		service = int32(p)
	}
	var sl discoveryv1.EndpointSlice
	if c.Client.Get(bg, types.NamespacedName{Namespace: v1alpha1.SystemNamespace, Name: hostName + "-egress"}, &sl) == nil && len(sl.Ports) == 1 {
		slice = ptr.Deref(sl.Ports[0].Port, 0)
	}
	return service, slice
}

// TestADuplicatedEgressPortMovesTheYoungerTarget: two targets' Services
// hold one gateway port (a write from before a restart, a cache that had
// not seen the other yet). The gateway serves the port with one of them,
// so the callers of the other would reach the wrong external resource:
// the younger Service moves to a free port, the older keeps it — the
// gateway's own rule for whom it serves.
func TestADuplicatedEgressPortMovesTheYoungerTarget(t *testing.T) {
	c := testenv.Start(t, "east")["east"]
	withGateway(t, c)
	// By name, resource-a would come first: the younger one must move
	// however the names sort.
	older := createEgressTarget(t, c, "resource-b")
	younger := createEgressTarget(t, c, "resource-a")
	for i, et := range []*v1alpha1.EgressTarget{older, younger} {
		if i > 0 {
			time.Sleep(1100 * time.Millisecond) // creation timestamps count seconds
		}
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: et.Namespace, Name: et.Spec.HostName,
				Labels: map[string]string{v1alpha1.ExportedLabel: "true", targets.EgressTargetLabel: et.Name,
					v1alpha1.ManagedByLabel: v1alpha1.ManagedByValue, v1alpha1.SquadLabel: et.Spec.Squad},
				Annotations: map[string]string{targets.EgressPortAnnotation: "30000"}},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, AppProtocol: ptr.To("http")}}},
		}
		if err := controllerutil.SetControllerReference(et, svc, c.Client.Scheme()); err != nil {
			t.Fatal(err)
		}
		if err := c.Client.Create(bg, svc); err != nil {
			t.Fatal(err)
		}
	}
	start(t, asController(t, c), controller.Options{})

	eventually(t, "the younger target moved to another port, its slice with it", func() bool {
		svc, sl := egressPorts(c, younger.Spec.HostName)
		return svc != 30000 && svc >= 30000 && svc <= 30999 && sl == svc
	})
	eventually(t, "the older target's slice on the port", func() bool {
		_, sl := egressPorts(c, older.Spec.HostName)
		return sl == 30000
	})
	time.Sleep(time.Second) // a reconcile that would move either again has had time to
	if svc, sl := egressPorts(c, older.Spec.HostName); svc != 30000 || sl != 30000 {
		t.Fatalf("the older target moved: Service %d, slice %d", svc, sl)
	}
	moved, _ := egressPorts(c, younger.Spec.HostName)
	if svc, sl := egressPorts(c, younger.Spec.HostName); svc != moved || sl != moved {
		t.Fatalf("the younger target moved again: Service %d, slice %d", svc, sl)
	}
}

// TestEgressTargetsCreatedTogetherGetDistinctPorts: targets applied at
// once (a GitOps sync) are reconciled one after another faster than the
// controller's cache sees the Services just written (here its watches
// lag half a second, as on a busy API server); no two may get one gateway
// port.
func TestEgressTargetsCreatedTogetherGetDistinctPorts(t *testing.T) {
	c := testenv.Start(t, "east")["east"]
	// No gateway: each reconcile ends (NoGateway) as soon as the Service
	// and slice are written, so the next one follows at once.
	start(t, lagging(asController(t, c), 500*time.Millisecond), controller.Options{})
	const n = 30
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("resource-%02d", i)
		createEgressTarget(t, c, names[i])
	}
	eventually(t, "every target reconciled", func() bool {
		for _, name := range names {
			if cond := egressReady(c, name); cond == nil || cond.Reason != "NoGateway" {
				return false
			}
		}
		return true
	})
	var svcs corev1.ServiceList
	if err := c.Client.List(bg, &svcs, client.InNamespace(v1alpha1.SystemNamespace), client.HasLabels{targets.EgressTargetLabel}); err != nil {
		t.Fatal(err)
	}
	holder := map[string]string{}
	for _, s := range svcs.Items {
		p := s.Annotations[targets.EgressPortAnnotation]
		if other, ok := holder[p]; ok {
			t.Errorf("Services %s and %s share gateway port %s", other, s.Name, p)
			continue
		}
		holder[p] = s.Name
	}
	if len(svcs.Items) != n {
		t.Fatalf("%d Services for %d targets", len(svcs.Items), n)
	}
}

// lagging is the cluster as a controller sees it whose watches deliver
// every event d after the API server sent it: its cache lags behind its
// own writes.
func lagging(c *testenv.Cluster, d time.Duration) *testenv.Cluster {
	l := *c
	l.Config = rest.CopyConfig(c.Config)
	l.Config.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		return roundTripperFunc(func(req *http.Request) (*http.Response, error) {
			resp, err := rt.RoundTrip(req)
			if w := req.URL.Query().Get("watch"); err != nil || (w != "true" && w != "1") {
				return resp, err
			}
			b := &laggingBody{body: resp.Body, delay: d, chunks: make(chan lagChunk, 1024), done: make(chan struct{})}
			go b.pump()
			resp.Body = b
			return resp, nil
		})
	}
	return &l
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

type lagChunk struct {
	data []byte
	at   time.Time
	err  error
}

// laggingBody hands out what body read, each chunk delay after it came.
type laggingBody struct {
	body   io.ReadCloser
	delay  time.Duration
	chunks chan lagChunk
	done   chan struct{}
	cur    []byte
	err    error
}

func (b *laggingBody) pump() {
	for {
		buf := make([]byte, 32<<10)
		n, err := b.body.Read(buf)
		select {
		case b.chunks <- lagChunk{data: buf[:n], at: time.Now(), err: err}:
		case <-b.done:
			return
		}
		if err != nil {
			return
		}
	}
}

func (b *laggingBody) Read(p []byte) (int, error) {
	for len(b.cur) == 0 {
		if b.err != nil {
			return 0, b.err
		}
		select {
		case c := <-b.chunks:
			select {
			case <-time.After(time.Until(c.at.Add(b.delay))):
			case <-b.done:
				return 0, io.ErrClosedPipe
			}
			b.cur, b.err = c.data, c.err
		case <-b.done:
			return 0, io.ErrClosedPipe
		}
	}
	n := copy(p, b.cur)
	b.cur = b.cur[n:]
	return n, nil
}

func (b *laggingBody) Close() error {
	select {
	case <-b.done:
	default:
		close(b.done)
	}
	return b.body.Close()
}
