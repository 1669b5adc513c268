package gateway

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/discovery"
	"sigs.k8s.io/controller-runtime/pkg/client"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/backbone-mesh/backbone/internal/kube"
	"github.com/backbone-mesh/backbone/internal/testenv"
)

// TestTheViewFollowsTheMCSAPI: whether the cluster serves ServiceExports
// decides which Services the gateway serves to peers. A failed discovery
// fails the start — read as "no MCS API", it would refuse every Service
// exported by ServiceExport alone while peers still mirror it — and a
// cluster that serves them only later (the CRD installed after the
// gateway started) gets them watched without a restart.
func TestTheViewFollowsTheMCSAPI(t *testing.T) {
	c := testenv.Start(t, "east")["east"]
	if err := c.CreateNamespace("shop"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var discoveryFails atomic.Int32
	proxy := testenv.DiscoveryProxy(t, c, &discoveryFails)

	// The proxy passes the admin's identity on: its 503 is the only
	// failure, where a rejected request (401, 403) would also fail the
	// start with an error naming discovery.
	discoveryFails.Store(http.StatusServiceUnavailable)
	v, err := newView(c.ThroughProxy(proxy))
	if err != nil {
		t.Fatal(err)
	}
	if err := v.start(ctx); !apierrors.IsServiceUnavailable(err) || !strings.Contains(err.Error(), "discovery") {
		t.Fatalf("start with a failing discovery: %v, want the discovery's 503", err)
	}
	discoveryFails.Store(0)
	if v, err = newView(c.ThroughProxy(proxy)); err != nil {
		t.Fatal(err)
	}
	if err := v.start(ctx); err != nil {
		t.Fatalf("start through the proxy once discovery answers: %v", err)
	}
	if !v.hasServiceExports.Load() {
		t.Fatal("ServiceExports not watched in a cluster that serves them")
	}

	// A cluster without the MCS API, which gets it later.
	sch := runtime.NewScheme()
	if err := apiextensionsv1.AddToScheme(sch); err != nil {
		t.Fatal(err)
	}
	if err := mcsv1beta1.Install(sch); err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(c.Config, client.Options{Scheme: sch})
	if err != nil {
		t.Fatal(err)
	}
	crd := &apiextensionsv1.CustomResourceDefinition{}
	if err := cl.Get(ctx, client.ObjectKey{Name: "serviceexports." + mcsv1beta1.GroupVersion.Group}, crd); err != nil {
		t.Fatal(err)
	}
	if err := cl.Delete(ctx, crd); err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if serves, err := kube.ServesServiceExports(dc); err == nil && !serves {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the ServiceExport CRD's deletion never reached discovery")
		}
	}
	old := rediscoverEvery
	rediscoverEvery = 100 * time.Millisecond
	defer func() { rediscoverEvery = old }()
	if v, err = newView(c.Config); err != nil {
		t.Fatal(err)
	}
	if err := v.start(ctx); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "payments"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}}}
	if err := c.Client.Create(ctx, svc); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * rediscoverEvery)
	if v.hasServiceExports.Load() {
		t.Fatal("ServiceExports watched in a cluster that does not serve them")
	}
	// The old CRD may still be going; the new one, then an export, as
	// soon as the API server takes them.
	for _, o := range []client.Object{
		&apiextensionsv1.CustomResourceDefinition{ObjectMeta: metav1.ObjectMeta{Name: crd.Name}, Spec: crd.Spec},
		&mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "payments"}},
	} {
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			err := cl.Create(ctx, o)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("creating %T: %v", o, err)
			}
		}
	}
	for deadline := time.Now().Add(20 * time.Second); !v.exported(ctx, svc); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a ServiceExport served after the start is never seen")
		}
	}
}
