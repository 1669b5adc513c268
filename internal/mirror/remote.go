package mirror

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"
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
	// discovery, and when it last found no ServiceExports (see
	// Reconciler.watch).
	discovery  discovery.DiscoveryInterface
	discovered time.Time
	cancel     context.CancelFunc
	synced     chan struct{}
	// listErr is the latest error of an informer's list or watch: what
	// keeps a first list from completing (a 403 on one resource).
	listErr atomic.Pointer[listError]
	syncErr error
	once    sync.Once
}

// startRemoteWatch starts the informers. Until the first complete list,
// every event calls onChange (the whole Link is planned once it is
// synced); afterwards each event names the remote Service it concerns
// (namespace, name) through onService, so a single change is mirrored
// without re-planning the Link.
func startRemoteWatch(cluster string, cfg *rest.Config, token string, onChange func(), onService func(namespace, name string)) (*remoteWatch, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.QPS, cfg.Burst = 50, 100
	cfg.Timeout = 15 * time.Second
	cfg.UserAgent = "backbone-mirror/" + cluster
	w := &remoteWatch{cluster: cluster, host: cfg.Host, token: token, synced: make(chan struct{})}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, err
	}
	// Whether the remote serves ServiceExports decides what is exported: a
	// failed lookup read as "no" would drop every mirror of a Service
	// exported by ServiceExport alone. Only the API server's "not found"
	// means no.
	w.discovery, w.discovered = dc, time.Now()
	if w.hasServiceExports, err = kube.ServesServiceExports(dc); err != nil {
		return nil, err
	}
	// Of the remote cluster's objects the cache holds what mirroring reads:
	// the EndpointSlices of headless Services (pod hostnames; Kubernetes
	// labels those slices service.kubernetes.io/headless) and, unless
	// ServiceExports can export any Service, the exported Services only.
	// A cluster's thousands of other objects stay out of memory.
	headless, err := labels.NewRequirement(corev1.IsHeadlessService, selection.Exists, nil)
	if err != nil {
		return nil, err
	}
	byObject := map[client.Object]cache.ByObject{
		&discoveryv1.EndpointSlice{}: {Label: labels.NewSelector().Add(*headless)},
	}
	if !w.hasServiceExports {
		byObject[&corev1.Service{}] = cache.ByObject{Label: labels.SelectorFromSet(labels.Set{v1alpha1.ExportedLabel: "true"})}
	}
	// The informers' watches run for as long as the API server keeps them
	// (it ends each after 5-10 minutes with a bookmark to resume from);
	// the client's 15 s timeout would cut every watch mid-stream, with no
	// bookmark, so that a quiet remote is resumed from its first list's
	// version until that is compacted away and every object listed again.
	// A dead connection is found by HTTP/2's health checks instead. The
	// REST mapper's discovery, which a Link's reconcile waits for when the
	// watch starts, keeps the timeout, and the live client with it.
	httpClient, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, err
	}
	mapper, err := apiutil.NewDynamicRESTMapper(cfg, httpClient)
	if err != nil {
		return nil, err
	}
	watchCfg := rest.CopyConfig(cfg)
	watchCfg.Timeout = 0
	c, err := cache.New(watchCfg, cache.Options{Scheme: kube.Scheme, Mapper: mapper, DefaultTransform: slimRemote, ByObject: byObject,
		DefaultWatchErrorHandler: func(ctx context.Context, r *toolscache.Reflector, err error) {
			w.listErr.Store(&listError{err: fmt.Errorf("%s: %w", r.TypeDescription(), err), at: time.Now()})
			toolscache.DefaultWatchErrorHandler(ctx, r, err)
		}})
	if err != nil {
		return nil, err
	}
	w.cache = c
	if w.live, err = client.New(cfg, client.Options{Scheme: kube.Scheme, HTTPClient: httpClient, Mapper: mapper}); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	kinds := []client.Object{&corev1.Service{}, &discoveryv1.EndpointSlice{}}
	if w.hasServiceExports {
		kinds = append(kinds, &mcsv1beta1.ServiceExport{})
	}
	var handlers []toolscache.InformerSynced
	for _, k := range kinds {
		inf, err := c.GetInformer(ctx, k, cache.BlockUntilSynced(false))
		if err != nil {
			cancel()
			return nil, err
		}
		changed := func(obj any) {
			if tomb, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj
			}
			o, ok := obj.(client.Object)
			if !ok || !w.isSynced() {
				onChange()
				return
			}
			name := o.GetName()
			if _, slice := o.(*discoveryv1.EndpointSlice); slice {
				// Only the pod hostnames of headless Services are read from
				// slices: the slice names its Service.
				if name = o.GetLabels()[discoveryv1.LabelServiceName]; name == "" {
					return
				}
			}
			onService(o.GetNamespace(), name)
		}
		h := toolscache.ResourceEventHandlerFuncs{
			AddFunc: changed,
			UpdateFunc: func(old, obj any) {
				// A relist after an outage replays every object: only real
				// changes are queued, so they are not stuck behind thousands
				// of unchanged ones.
				if o, ok := old.(client.Object); ok {
					if n, ok := obj.(client.Object); ok && o.GetResourceVersion() == n.GetResourceVersion() {
						return
					}
				}
				changed(obj)
			},
			DeleteFunc: changed,
		}
		reg, err := inf.AddEventHandler(h)
		if err != nil {
			cancel()
			return nil, err
		}
		handlers = append(handlers, reg.HasSynced)
	}
	go func() { _ = c.Start(ctx) }()
	go func() {
		// The first list is complete once the caches hold it and the
		// handlers were handed every object in it: a cache reports synced
		// while its handler may still have thousands of the list's objects
		// to deliver, which would each count as a single change.
		if !c.WaitForCacheSync(ctx) || !toolscache.WaitForCacheSync(ctx.Done(), handlers...) {
			w.syncErr = errors.New("stopped before the first complete list")
		}
		close(w.synced)
		onChange()
	}()
	return w, nil
}

func (w *remoteWatch) stop() { w.once.Do(w.cancel) }

// slimRemote keeps, of each remote object, what mirroring reads: no
// managedFields, no Service status, and of an EndpointSlice only its pod
// hostnames — the remote cluster's slices are all of its endpoints, and
// only headless Services' hostnames matter here.
func slimRemote(obj any) (any, error) {
	if o, ok := obj.(metav1.Object); ok {
		o.SetManagedFields(nil)
	}
	switch o := obj.(type) {
	case *corev1.Service:
		o.Status = corev1.ServiceStatus{}
	case *discoveryv1.EndpointSlice:
		var eps []discoveryv1.Endpoint
		for _, ep := range o.Endpoints {
			if ep.Hostname != nil && *ep.Hostname != "" {
				eps = append(eps, discoveryv1.Endpoint{Hostname: ep.Hostname, Conditions: discoveryv1.EndpointConditions{Ready: ep.Conditions.Ready}})
			}
		}
		o.Endpoints, o.Ports = eps, nil
	}
	return obj, nil
}

type listError struct {
	err error
	at  time.Time
}

// lastListError is the latest list or watch error of the informers, when
// it is recent: a reflector retries within 30 s, so an error that lasts
// is seen again by then, and one older than a minute was overcome.
func (w *remoteWatch) lastListError() error {
	if p := w.listErr.Load(); p != nil && time.Since(p.at) < time.Minute {
		return p.err
	}
	return nil
}

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
	svcs, err := servicesInPlace(ctx, w.cache)
	if err != nil {
		return nil, err
	}
	exports := map[string]bool{}
	if w.hasServiceExports {
		var ses mcsv1beta1.ServiceExportList
		if err := w.cache.List(ctx, &ses, client.UnsafeDisableDeepCopy); err != nil {
			return nil, err
		}
		for _, se := range ses.Items {
			exports[se.Namespace+"/"+se.Name] = true
		}
	}
	out := make([]RemoteService, 0, len(svcs))
	for _, s := range svcs {
		if !isExported(s, exports[s.Namespace+"/"+s.Name]) {
			continue
		}
		r, err := w.remoteService(ctx, s)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// exportedOne returns the remote Service namespace/name if it is exported
// (false when it is not, or no longer exists).
func (w *remoteWatch) exportedOne(ctx context.Context, namespace, name string) (RemoteService, bool, error) {
	key := client.ObjectKey{Namespace: namespace, Name: name}
	var s corev1.Service
	if err := w.cache.Get(ctx, key, &s, client.UnsafeDisableDeepCopy); err != nil {
		return RemoteService{}, false, client.IgnoreNotFound(err)
	}
	export := false
	if w.hasServiceExports {
		var se mcsv1beta1.ServiceExport
		err := w.cache.Get(ctx, key, &se, client.UnsafeDisableDeepCopy)
		if client.IgnoreNotFound(err) != nil {
			return RemoteService{}, false, err
		}
		export = err == nil
	}
	if !isExported(&s, export) {
		return RemoteService{}, false, nil
	}
	r, err := w.remoteService(ctx, &s)
	return r, err == nil, err
}

// isExported: labelled, or with a ServiceExport; never a mirror itself, so
// that mirrors do not loop between clusters.
func isExported(s *corev1.Service, serviceExport bool) bool {
	return (s.Labels[v1alpha1.ExportedLabel] == "true" || serviceExport) && s.Labels[v1alpha1.MirroredFromLabel] == ""
}

// remoteService adds the pod hostnames of a headless Service.
func (w *remoteWatch) remoteService(ctx context.Context, s *corev1.Service) (RemoteService, error) {
	r := RemoteService{Service: s}
	if s.Spec.ClusterIP != corev1.ClusterIPNone {
		return r, nil
	}
	var slices discoveryv1.EndpointSliceList
	if err := w.cache.List(ctx, &slices, client.InNamespace(s.Namespace), client.MatchingLabels{discoveryv1.LabelServiceName: s.Name}, client.UnsafeDisableDeepCopy); err != nil {
		return r, err
	}
	ready := map[string]bool{}
	for _, sl := range slices.Items {
		for _, ep := range sl.Endpoints {
			if ep.Hostname != nil && *ep.Hostname != "" {
				h := *ep.Hostname
				if _, seen := ready[h]; !seen {
					r.Hostnames = append(r.Hostnames, h)
				}
				// Unset means ready (the API's rule); a hostname in two
				// slices (two address families) is ready if either says so.
				ready[h] = ready[h] || ep.Conditions.Ready == nil || *ep.Conditions.Ready
			}
		}
	}
	for h, ok := range ready {
		if !ok {
			if r.NotReady == nil {
				r.NotReady = map[string]bool{}
			}
			r.NotReady[h] = true
		}
	}
	return r, nil
}

func (w *remoteWatch) String() string { return fmt.Sprintf("%s (%s)", w.cluster, w.host) }
