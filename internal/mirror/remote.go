package mirror

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/kube"
)

// remoteWatch is the informer set on one linked cluster, with the
// least-privilege link-reader credentials: Services, EndpointSlices (for
// the pod hostnames of headless Services) and ServiceExports.
type remoteWatch struct {
	cluster           string
	host              string
	token             string
	cache             cache.Cache
	live              client.Reader // uncached, for the liveness check
	hasServiceExports bool
	cancel            context.CancelFunc
	synced            chan struct{}
	syncErr           error
	once              sync.Once
}

func startRemoteWatch(cluster string, cfg *rest.Config, token string, onChange func()) (*remoteWatch, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.QPS, cfg.Burst = 50, 100
	cfg.Timeout = 15 * time.Second
	cfg.UserAgent = "backbone-mirror/" + cluster
	w := &remoteWatch{cluster: cluster, host: cfg.Host, token: token, synced: make(chan struct{})}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, err
	}
	if _, err := dc.ServerResourcesForGroupVersion(mcsv1beta1.GroupVersion.String()); err == nil {
		w.hasServiceExports = true
	}
	c, err := cache.New(cfg, cache.Options{Scheme: kube.Scheme})
	if err != nil {
		return nil, err
	}
	w.cache = c
	if w.live, err = client.New(cfg, client.Options{Scheme: kube.Scheme}); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	kinds := []client.Object{&corev1.Service{}, &discoveryv1.EndpointSlice{}}
	if w.hasServiceExports {
		kinds = append(kinds, &mcsv1beta1.ServiceExport{})
	}
	h := toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { onChange() },
		UpdateFunc: func(any, any) { onChange() },
		DeleteFunc: func(any) { onChange() },
	}
	for _, k := range kinds {
		inf, err := c.GetInformer(ctx, k, cache.BlockUntilSynced(false))
		if err != nil {
			cancel()
			return nil, err
		}
		if _, err := inf.AddEventHandler(h); err != nil {
			cancel()
			return nil, err
		}
	}
	go func() { _ = c.Start(ctx) }()
	go func() {
		if !c.WaitForCacheSync(ctx) {
			w.syncErr = errors.New("stopped before the first complete list")
		}
		close(w.synced)
		onChange()
	}()
	return w, nil
}

func (w *remoteWatch) stop() { w.once.Do(w.cancel) }

// isSynced reports whether every informer has completed its first list.
func (w *remoteWatch) isSynced() bool {
	select {
	case <-w.synced:
		return w.syncErr == nil
	default:
		return false
	}
}

// ping checks that the remote API server answers now: informers keep
// serving the last state they saw, so an outage must be detected apart.
func (w *remoteWatch) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var l corev1.ServiceList
	return w.live.List(ctx, &l, client.Limit(1), client.InNamespace(v1alpha1.SystemNamespace))
}

// exported lists the remote Services exported by label or ServiceExport,
// with the pod hostnames of headless ones.
func (w *remoteWatch) exported(ctx context.Context) ([]RemoteService, error) {
	// Read in place: mirrors are built from copies of what they need.
	var svcs corev1.ServiceList
	if err := w.cache.List(ctx, &svcs, client.UnsafeDisableDeepCopy); err != nil {
		return nil, err
	}
	exports := map[string]bool{}
	if w.hasServiceExports {
		var ses mcsv1beta1.ServiceExportList
		if err := w.cache.List(ctx, &ses); err != nil {
			return nil, err
		}
		for _, se := range ses.Items {
			exports[se.Namespace+"/"+se.Name] = true
		}
	}
	var out []RemoteService
	for _, s := range svcs.Items {
		if s.Labels[v1alpha1.ExportedLabel] != "true" && !exports[s.Namespace+"/"+s.Name] {
			continue
		}
		if s.Labels[v1alpha1.MirroredFromLabel] != "" {
			continue // never re-export a mirror: no loops between clusters
		}
		r := RemoteService{Service: s}
		if s.Spec.ClusterIP == corev1.ClusterIPNone {
			var slices discoveryv1.EndpointSliceList
			if err := w.cache.List(ctx, &slices, client.InNamespace(s.Namespace), client.MatchingLabels{discoveryv1.LabelServiceName: s.Name}); err != nil {
				return nil, err
			}
			for _, sl := range slices.Items {
				for _, ep := range sl.Endpoints {
					if ep.Hostname != nil && *ep.Hostname != "" {
						r.Hostnames = append(r.Hostnames, *ep.Hostname)
					}
				}
			}
		}
		out = append(out, r)
	}
	return out, nil
}

func (w *remoteWatch) String() string { return fmt.Sprintf("%s (%s)", w.cluster, w.host) }
