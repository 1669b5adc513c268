package main

import (
	"cmp"
	"context"
	"fmt"
	"log"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/backbone-mesh/backbone/internal/kube"
)

// apiServerResult is what a fresh API server alone accepts, with no
// controller at all: the floor under the mirroring figures, whose first
// sync has west create one Service (with a cluster IP) and one
// EndpointSlice per remote Service.
type apiServerResult struct {
	n, batch int
	// serviceRates are Services with a cluster IP created per second, one
	// figure per batch, the cluster holding batch×i of them before.
	serviceRates []float64
	total        time.Duration // for every Service of serviceRates
	// The same number of objects of kinds without a cluster IP, created
	// after the Services (on the same, as full, API server).
	headlessRate, sliceRate, configMapRate float64
}

// measureAPIServer creates n Services with cluster IPs in one fresh
// cluster, 32 at a time as the controller writes, in batches, then
// batch-sized sets of headless Services, EndpointSlices and ConfigMaps.
func measureAPIServer(ctx context.Context, dir string, n int) (apiServerResult, error) {
	res := apiServerResult{n: n, batch: max(n/5, 1)}
	c, stop, err := startCluster(filepath.Join(dir, "apiserver"), "alone")
	if err != nil {
		return res, err
	}
	defer stop()
	if err := kube.EnsureNamespace(ctx, c.Client, "scale"); err != nil {
		return res, err
	}
	create := func(count int, obj func(i int) client.Object) (float64, error) {
		start := time.Now()
		if err := createParallel(ctx, c.Client, count, obj); err != nil {
			return 0, err
		}
		return float64(count) / time.Since(start).Seconds(), nil
	}
	start := time.Now()
	for b := 0; b*res.batch < n; b++ {
		count := min(res.batch, n-b*res.batch)
		rate, err := create(count, func(i int) client.Object { return scaleService(fmt.Sprintf("svc-%05d", b*res.batch+i), false) })
		if err != nil {
			return res, err
		}
		log.Printf("  %d Services with cluster IPs among %d: %.0f/s", count, b*res.batch, rate)
		res.serviceRates = append(res.serviceRates, rate)
	}
	res.total = time.Since(start)
	if res.headlessRate, err = create(res.batch, func(i int) client.Object {
		return scaleService(fmt.Sprintf("headless-%05d", i), true)
	}); err != nil {
		return res, err
	}
	if res.sliceRate, err = create(res.batch, func(i int) client.Object {
		return scaleSlice(fmt.Sprintf("svc-%05d", i))
	}); err != nil {
		return res, err
	}
	if res.configMapRate, err = create(res.batch, func(i int) client.Object {
		return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("cm-%05d", i), Namespace: "scale"}}
	}); err != nil {
		return res, err
	}
	log.Printf("  %d headless Services: %.0f/s, EndpointSlices: %.0f/s, ConfigMaps: %.0f/s", res.batch, res.headlessRate, res.sliceRate, res.configMapRate)
	return res, nil
}

// createParallel creates obj(0) … obj(n-1), 32 at a time.
func createParallel(ctx context.Context, c client.Client, n int, obj func(i int) client.Object) error {
	work := make(chan int)
	var (
		mu    sync.Mutex
		first error
		wg    sync.WaitGroup
	)
	for range 32 {
		wg.Go(func() {
			for i := range work {
				if err := c.Create(ctx, obj(i)); err != nil {
					mu.Lock()
					first = cmp.Or(first, err)
					mu.Unlock()
				}
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	return first
}

// scaleSlice is an EndpointSlice of the kind a mirror has: one address,
// one port.
func scaleSlice(name string) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "scale",
			Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.213.0.2"}}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](20000)}},
	}
}

func (r *report) writeAPIServer(b *strings.Builder) {
	a := r.apiServer
	fmt.Fprintf(b, "\n## The API server alone\n\nOne fresh cluster (the same kube-apiserver and etcd as above), no controller: the harness creates Services with cluster IPs, 32 at a time, "+
		"in batches of %d, then %d headless Services, EndpointSlices and ConfigMaps. This is the floor under the first sync above, "+
		"which has west create a Service with a cluster IP and an EndpointSlice per remote Service. "+
		"A cluster-IP allocation in kube-apiserver v1.37 lists every IPAddress object of the cluster twice, to set its allocated and available gauges "+
		"(`pkg/registry/core/service/ipallocator`, `createIPAddress` calling `Used` and `Free`): each creation costs time in proportion to the Services already there.\n\n", a.batch, a.batch)
	b.WriteString("| Services already in the cluster | Services with a cluster IP created per second |\n|---|---|\n")
	for i, rate := range a.serviceRates {
		fmt.Fprintf(b, "| %d | %.0f |\n", i*a.batch, rate)
	}
	fmt.Fprintf(b, "\nAll %d: %.1f s. Then, per second: headless Services %.0f, EndpointSlices %.0f, ConfigMaps %.0f.\n",
		a.n, a.total.Seconds(), a.headlessRate, a.sliceRate, a.configMapRate)
}
