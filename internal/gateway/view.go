package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/kube"
)

// view is the gateway's informer-backed view of its own cluster: the
// Services it may serve, their endpoints, the mirrors it listens for, the
// Links to its peers.
type view struct {
	cache cache.Cache
	// hasServiceExports is set once the ServiceExports' informer synced.
	hasServiceExports atomic.Bool
	discovery         discovery.DiscoveryInterface
	rr                atomic.Uint64
}

// rediscoverEvery is how often a cluster that did not serve ServiceExports
// is asked again.
var rediscoverEvery = 30 * time.Second

func newView(cfg *rest.Config) (*view, error) {
	c, err := cache.New(cfg, cache.Options{Scheme: kube.Scheme})
	if err != nil {
		return nil, err
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &view{cache: c, discovery: dc}, nil
}

// start runs the informers for every kind the gateway reads and waits
// until they are synced. The MCS API is optional: without it only the
// label exports, and a cluster that gets it later (its CRD installed
// after the gateway started) is asked again every rediscoverEvery. A
// failed discovery fails the start: read as "no MCS API", it would refuse
// every Service exported by ServiceExport alone, which peers still mirror.
func (v *view) start(ctx context.Context) error {
	serves, err := kube.ServesServiceExports(v.discovery)
	if err != nil {
		return err
	}
	kinds := []client.Object{&corev1.Service{}, &discoveryv1.EndpointSlice{}, &v1alpha1.Link{}, &v1alpha1.EgressTarget{}}
	if serves {
		kinds = append(kinds, &mcsv1beta1.ServiceExport{})
	}
	for _, k := range kinds {
		if _, err := v.cache.GetInformer(ctx, k); err != nil {
			return fmt.Errorf("watching %T: %w", k, err)
		}
	}
	go func() { _ = v.cache.Start(ctx) }()
	if !v.cache.WaitForCacheSync(ctx) {
		return errors.New("the local cluster's caches did not sync")
	}
	v.hasServiceExports.Store(serves)
	if !serves {
		go v.watchForServiceExports(ctx)
	}
	return nil
}

// watchForServiceExports asks the cluster again until it serves
// ServiceExports, then watches them too.
func (v *view) watchForServiceExports(ctx context.Context) {
	t := time.NewTicker(rediscoverEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if serves, err := kube.ServesServiceExports(v.discovery); err != nil || !serves {
			continue
		}
		// The cache runs: the informer starts and is waited for.
		if _, err := v.cache.GetInformer(ctx, &mcsv1beta1.ServiceExport{}); err != nil {
			continue
		}
		v.hasServiceExports.Store(true)
		return
	}
}

var (
	errNotFound    = errors.New("no such service")
	errNotExported = errors.New("service is not exported")
	errNotAllowed  = errors.New("caller's cluster is not in the service's allowed-clusters")
	errNoEndpoints = errors.New("no ready endpoint")
)

// exported reports whether a Service is exported by label or ServiceExport.
func (v *view) exported(ctx context.Context, svc *corev1.Service) bool {
	if svc.Labels[v1alpha1.ExportedLabel] == "true" {
		return true
	}
	if !v.hasServiceExports.Load() {
		return false
	}
	var se mcsv1beta1.ServiceExport
	return v.cache.Get(ctx, types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}, &se) == nil
}

// allowed applies the backbone.dev/allowed-clusters annotation.
func allowed(svc *corev1.Service, caller string) bool {
	list, ok := svc.Annotations[v1alpha1.AllowedClustersAnnotation]
	if !ok {
		return true
	}
	for _, c := range strings.Split(list, ",") {
		if strings.TrimSpace(c) == caller {
			return true
		}
	}
	return false
}

// authorize finds the exported Service an authority names and checks the
// caller may reach it.
func (v *view) authorize(ctx context.Context, a Authority, caller string) (*corev1.Service, error) {
	var svc corev1.Service
	if err := v.cache.Get(ctx, types.NamespacedName{Namespace: a.Namespace, Name: a.Service}, &svc); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, errNotFound
		}
		return nil, err
	}
	// A mirror is never served, whatever exports it: it leads on to the
	// cluster it mirrors, where the caller would arrive as this cluster
	// and past that Service's own allowed-clusters.
	if svc.Labels[v1alpha1.MirroredFromLabel] != "" || !v.exported(ctx, &svc) {
		return nil, errNotExported
	}
	if !allowed(&svc, caller) {
		return nil, errNotAllowed
	}
	return &svc, nil
}

// backend picks a ready endpoint of the service port the authority names,
// round-robin, as kube-proxy would, without depending on cluster DNS.
func (v *view) backend(ctx context.Context, svc *corev1.Service, a Authority) (string, error) {
	portName, err := tcpPort(svc, a.Port)
	if err != nil {
		return "", err
	}
	var slices discoveryv1.EndpointSliceList
	// Read only, per stream: the cache's own objects, not deep copies.
	if err := v.cache.List(ctx, &slices, client.InNamespace(svc.Namespace), client.MatchingLabels{discoveryv1.LabelServiceName: svc.Name}, client.UnsafeDisableDeepCopy); err != nil {
		return "", err
	}
	var candidates []string
	for _, sl := range slices.Items {
		if sl.AddressType != discoveryv1.AddressTypeIPv4 && sl.AddressType != discoveryv1.AddressTypeIPv6 {
			// FQDN endpoints are names the API server does not check as
			// it checks IPs (no loopback, no link-local): the gateway
			// would dial whatever they resolve to.
			continue
		}
		var port int32
		for _, p := range sl.Ports {
			if p.Port != nil && ptrOr(p.Name, "") == portName {
				port = *p.Port
			}
		}
		if port == 0 {
			continue
		}
		for _, ep := range sl.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			if a.Hostname != "" && ptrOr(ep.Hostname, "") != a.Hostname {
				continue
			}
			for _, addr := range ep.Addresses {
				candidates = append(candidates, net.JoinHostPort(addr, strconv.Itoa(int(port))))
			}
		}
	}
	if len(candidates) == 0 {
		return "", fmt.Errorf("%w for %s", errNoEndpoints, a)
	}
	return candidates[v.rr.Add(1)%uint64(len(candidates))], nil
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// tcpPort returns the name of svc's TCP port number port, or errNotFound.
func tcpPort(svc *corev1.Service, port int32) (string, error) {
	for _, p := range svc.Spec.Ports {
		if p.Port == port && (p.Protocol == "" || p.Protocol == corev1.ProtocolTCP) {
			return p.Name, nil
		}
	}
	return "", fmt.Errorf("%w: service %s/%s has no TCP port %d", errNotFound, svc.Namespace, svc.Name, port)
}
