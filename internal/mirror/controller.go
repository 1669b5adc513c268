package mirror

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/kube"
	"github.com/backbone-mesh/backbone/internal/linkcreds"
)

// Finalizer keeps a Link until its mirrors are gone.
const Finalizer = "backbone.dev/mirrors"

// Reasons of the Link's Ready condition.
const (
	ReasonSynced              = "Synced"
	ReasonSyncedWithProblems  = "SyncedWithProblems"
	ReasonInsecureCredentials = "InsecureCredentials"
	ReasonInvalidCredentials  = "InvalidCredentials"
	ReasonRemoteUnreachable   = "RemoteUnreachable"
	ReasonCredentialsRejected = "CredentialsRejected"
	ReasonWaitingForRemote    = "WaitingForRemote"
	// ReasonDuplicateTarget: another Link mirrors the same cluster; the
	// older one does the work, this one waits.
	ReasonDuplicateTarget = "DuplicateTarget"
)

// Options configure the mirror controller.
type Options struct {
	Ports PortRange
	// Resync is how often a Link is reconciled without events, which
	// also checks the remote API server (default 30s).
	Resync  time.Duration
	Metrics *Metrics
	Log     *slog.Logger
	// Parallelism bounds the API writes in flight while a plan is applied
	// (default 32); the client's QPS limit still applies.
	Parallelism int
}

// linkWorkers is how many Links are reconciled at once.
const linkWorkers = 4

// Reconciler keeps the mirrors of every Link.
type Reconciler struct {
	client client.Client
	// cache is the client's cache, read in place by whole-Link passes.
	cache cache.Cache
	// apiReader reads past the cache: what a Link's deletion removes must
	// include the mirrors written a moment before.
	apiReader client.Reader
	opts      Options
	recorder  events.EventRecorder
	events    chan event.TypedGenericEvent[*v1alpha1.Link]

	mu       sync.Mutex
	watches  map[types.NamespacedName]*remoteWatch
	creds    map[types.NamespacedName]string // what each watch was built from
	later    map[types.NamespacedName]bool   // a whole-Link pass is scheduled
	counting map[types.NamespacedName]bool   // a count refresh is scheduled
	// watchesStopped is set once the manager stopped and took the watches
	// with it: a watch started meanwhile is stopped, not kept.
	watchesStopped bool

	// services carries single changes (one remote Service of one Link) to
	// the worker that mirrors just that Service.
	services workqueue.TypedRateLimitingInterface[serviceKey]
	// singles is held (read) by every single change while it plans and
	// writes; finalize takes it once its watch is stopped, to wait for
	// those that began before.
	singles sync.RWMutex
	// syncMu serialises plans with their writes, whole-Link or single:
	// port allocation reads every mirror's ports.
	syncMu sync.Mutex
	// nextPort is where single changes look for a new gateway port
	// (under syncMu).
	nextPort int32
	// passes is, per Link, what its whole-Link passes left for the next
	// one (under syncMu).
	passes map[types.NamespacedName]*linkPasses
	// ownWrites tells the events of this controller's own writes from
	// everyone else's.
	ownWrites ownWrites
}

// serviceKey names one remote Service of one Link.
type serviceKey struct {
	Link      types.NamespacedName
	Namespace string
	Name      string
}

// Setup registers the mirror controller with the manager.
func Setup(mgr ctrl.Manager, opts Options) error {
	if opts.Resync == 0 {
		opts.Resync = 30 * time.Second
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Parallelism <= 0 {
		opts.Parallelism = 32
	}
	r := &Reconciler{
		client: mgr.GetClient(), cache: mgr.GetCache(), apiReader: mgr.GetAPIReader(), opts: opts,
		recorder: mgr.GetEventRecorder("backbone-mirror"),
		events:   make(chan event.TypedGenericEvent[*v1alpha1.Link], 1024),
		watches:  map[types.NamespacedName]*remoteWatch{}, creds: map[types.NamespacedName]string{},
		later: map[types.NamespacedName]bool{}, counting: map[types.NamespacedName]bool{},
		services: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[serviceKey](),
			workqueue.TypedRateLimitingQueueConfig[serviceKey]{Name: "mirror_service"}),
	}
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &corev1.Service{}, mirrorOfIndex, indexMirrorOf); err != nil {
		return err
	}
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &discoveryv1.EndpointSlice{}, gatewayPortIndex, indexGatewayPorts); err != nil {
		return err
	}
	// The worker runs only on the leader, like the reconciler.
	if err := mgr.Add(manager.RunnableFunc(r.runServices)); err != nil {
		return err
	}
	toAllLinks := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, _ client.Object) []reconcile.Request {
		return r.allLinks(ctx)
	})
	// A mirror changed or deleted here (by anyone, us included) is checked
	// on its own; the gateway's endpoints feed every mirror of every Link.
	mirrors := handler.Funcs{
		CreateFunc: func(ctx context.Context, e event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			if !r.ownWrites.seen(e.Object) { // what this controller just wrote: nothing to check
				r.localChanged(ctx, e.Object, q.Add)
			}
		},
		UpdateFunc: func(ctx context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			if !r.ownWrites.seen(e.ObjectNew) {
				r.localChanged(ctx, e.ObjectNew, q.Add)
			}
		},
		DeleteFunc: func(ctx context.Context, e event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			r.ownWrites.forget(e.Object) // a deletion is checked whoever made it
			r.localChanged(ctx, e.Object, q.Add)
		},
		GenericFunc: func(ctx context.Context, e event.GenericEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			r.localChanged(ctx, e.Object, q.Add)
		},
	}
	inSystemNamespace := predicate.NewPredicateFuncs(func(o client.Object) bool { return o.GetNamespace() == v1alpha1.SystemNamespace })
	return ctrl.NewControllerManagedBy(mgr).
		Named("mirror").
		// A Link's status moves with every probe and mirror count; only a
		// new spec, deletion, finalizers or the probe's verdict change
		// what its mirrors should be.
		For(&v1alpha1.Link{}, builder.WithPredicates(linkChanged)).
		Watches(&corev1.Service{}, mirrors).
		Watches(&discoveryv1.EndpointSlice{}, mirrors).
		Watches(&corev1.Secret{}, toAllLinks, builder.WithPredicates(inSystemNamespace)).
		Watches(&corev1.Namespace{}, toAllLinks).
		WatchesRawSource(source.Channel(r.events, &handler.TypedEnqueueRequestForObject[*v1alpha1.Link]{})).
		// Several Links at once: a remote that does not answer holds its
		// own reconcile (the watch's start, the ping) until the client's
		// timeout, not every other Link's. Plans and their writes still go
		// one at a time (syncMu): port allocation reads every Link's ports.
		// A restarted controller in the same process (tests) reuses the name.
		WithOptions(controller.Options{MaxConcurrentReconciles: linkWorkers, SkipNameValidation: ptr.To(true)}).
		Complete(r)
}

// seniorLink is another Link, not being deleted, that targets link's
// cluster and precedes it, or nil.
func (r *Reconciler) seniorLink(ctx context.Context, link *v1alpha1.Link) (*v1alpha1.Link, error) {
	others, err := r.sameTarget(ctx, link)
	if err != nil {
		return nil, err
	}
	for i := range others {
		if o := &others[i]; o.Precedes(link) {
			return o, nil
		}
	}
	return nil, nil
}

// sameTarget lists the other Links, not being deleted, that target
// link's cluster.
func (r *Reconciler) sameTarget(ctx context.Context, link *v1alpha1.Link) ([]v1alpha1.Link, error) {
	var links v1alpha1.LinkList
	if err := r.client.List(ctx, &links, client.InNamespace(v1alpha1.SystemNamespace)); err != nil {
		return nil, err
	}
	var out []v1alpha1.Link
	for _, o := range links.Items {
		if o.Name != link.Name && o.Spec.TargetClusterName == link.Spec.TargetClusterName && o.DeletionTimestamp.IsZero() {
			out = append(out, o)
		}
	}
	return out, nil
}

func (r *Reconciler) allLinks(ctx context.Context) []reconcile.Request {
	var links v1alpha1.LinkList
	if err := r.client.List(ctx, &links, client.InNamespace(v1alpha1.SystemNamespace)); err != nil {
		return nil
	}
	out := make([]reconcile.Request, 0, len(links.Items))
	for _, l := range links.Items {
		out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: l.Namespace, Name: l.Name}})
	}
	return out
}

func (r *Reconciler) linksOfCluster(ctx context.Context, cluster string) []reconcile.Request {
	if cluster == "" {
		return nil
	}
	var out []reconcile.Request
	for _, req := range r.allLinks(ctx) {
		var l v1alpha1.Link
		if r.client.Get(ctx, req.NamespacedName, &l) == nil && l.Spec.TargetClusterName == cluster {
			out = append(out, req)
		}
	}
	return out
}

// localChanged routes a local Service or EndpointSlice event: a mirror's
// to the single-Service worker, the gateway's slices to every Link (through
// enqueue), the rest nowhere.
func (r *Reconciler) localChanged(ctx context.Context, o client.Object, enqueue func(reconcile.Request)) {
	labels := o.GetLabels()
	if _, slice := o.(*discoveryv1.EndpointSlice); slice {
		if o.GetNamespace() == v1alpha1.SystemNamespace && labels[discoveryv1.LabelServiceName] == v1alpha1.GatewayServiceName {
			for _, req := range r.allLinks(ctx) {
				enqueue(req)
			}
			return
		}
		if labels[discoveryv1.LabelManagedBy] != v1alpha1.EndpointSliceManagedBy || labels[v1alpha1.MirroredFromLabel] == "" {
			return
		}
		if remote := o.GetAnnotations()[v1alpha1.RemoteNameAnnotation]; remote != "" {
			for _, req := range r.linksOfCluster(ctx, labels[v1alpha1.MirroredFromLabel]) {
				r.services.Add(serviceKey{Link: req.NamespacedName, Namespace: o.GetNamespace(), Name: remote})
			}
			return
		}
		// An older slice without the annotation: its mirror names the
		// remote Service.
		var svc corev1.Service
		if err := r.client.Get(ctx, types.NamespacedName{Namespace: o.GetNamespace(), Name: o.GetName()}, &svc, client.UnsafeDisableDeepCopy); err != nil {
			for _, req := range r.linksOfCluster(ctx, labels[v1alpha1.MirroredFromLabel]) {
				enqueue(req) // an orphaned slice: the whole-Link pass removes it
			}
			return
		}
		o, labels = &svc, svc.Labels
	}
	cluster := labels[v1alpha1.MirroredFromLabel]
	if cluster == "" || labels[v1alpha1.ManagedByLabel] != v1alpha1.ManagedByValue {
		return
	}
	remote := o.GetAnnotations()[v1alpha1.RemoteNameAnnotation]
	for _, req := range r.linksOfCluster(ctx, cluster) {
		if remote == "" {
			enqueue(req)
			continue
		}
		r.services.Add(serviceKey{Link: req.NamespacedName, Namespace: o.GetNamespace(), Name: remote})
	}
}

// linkChanged passes the Link updates that matter to its mirrors.
var linkChanged = predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
	o, ok1 := e.ObjectOld.(*v1alpha1.Link)
	n, ok2 := e.ObjectNew.(*v1alpha1.Link)
	if !ok1 || !ok2 {
		return true
	}
	alive := func(l *v1alpha1.Link) bool { return l.Status.Probe == nil || l.Status.Probe.Alive }
	return o.Generation != n.Generation || !n.DeletionTimestamp.IsZero() || !slices.Equal(o.Finalizers, n.Finalizers) || alive(o) != alive(n)
}}

// ownWrites tells the events of the controller's own writes from
// everyone else's. A write is noted before it is sent: its event may reach
// the informer before the API server's answer reaches the writer (a first
// sync of 10,000 mirrors, 32 writes in flight, saw thousands of them come
// back as work when the version was only noted after the answer).
type ownWrites struct {
	mu sync.Mutex
	m  map[string]*ownWrite
}

type ownWrite struct {
	inFlight bool
	rv       string // the version written, once the API server answered
	early    string // the version an event brought while the write was in flight
}

func ownKey(o client.Object) string {
	return fmt.Sprintf("%T/%s/%s", o, o.GetNamespace(), o.GetName())
}

// begin notes a write of o about to be sent.
func (w *ownWrites) begin(o client.Object) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.m == nil {
		w.m = map[string]*ownWrite{}
	}
	w.m[ownKey(o)] = &ownWrite{inFlight: true}
}

// done notes the answer to the write begun for o (o as written, or err).
// It reports whether o needs a check after all: an event came while the
// write was in flight and its version is not the one written (someone
// else's change, or a write that failed).
func (w *ownWrites) done(o client.Object, err error) (check bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	k := ownKey(o)
	e, ok := w.m[k]
	if !ok || !e.inFlight {
		return false
	}
	if err != nil {
		delete(w.m, k)
		return e.early != ""
	}
	e.inFlight, e.rv = false, o.GetResourceVersion()
	if e.early == "" {
		return false // its event is still to come
	}
	delete(w.m, k)
	return e.early != e.rv
}

// seen reports whether o is the version the controller wrote (or is
// writing: done tells then); any other version forgets the write.
func (w *ownWrites) seen(o client.Object) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	k := ownKey(o)
	e, ok := w.m[k]
	if !ok {
		return false
	}
	if e.inFlight {
		e.early = o.GetResourceVersion()
		return true
	}
	delete(w.m, k)
	return e.rv == o.GetResourceVersion()
}

func (w *ownWrites) forget(o client.Object) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.m, ownKey(o))
}

// recheck routes, as its event would have been, a mirror or mirror slice
// whose event was taken for the controller's own write while that write
// was in flight, and was not.
func (r *Reconciler) recheck(ctx context.Context, o client.Object) {
	r.localChanged(ctx, o, func(req reconcile.Request) { r.enqueueLink(req.NamespacedName) })
}

// linkPasses is what a Link's whole-Link passes carry from one to the
// next: the mirrors the last one found in sync, at which generation of
// the Link, and how many passes were made.
type linkPasses struct {
	verified   Verified
	generation int64
	count      int
}

// serviceWorkers mirror single changes side by side: their plans take
// turns, their writes — each an API round trip — need not.
const serviceWorkers = 4

// runServices mirrors single changes until ctx ends.
func (r *Reconciler) runServices(ctx context.Context) error {
	go func() {
		<-ctx.Done()
		r.services.ShutDown()
	}()
	if err := r.sweepOrphans(ctx); err != nil {
		r.opts.Log.Warn("sweeping the mirrors of clusters no Link targets", "err", err)
	}
	var wg sync.WaitGroup
	for range serviceWorkers {
		wg.Go(r.serviceWorker(ctx))
	}
	wg.Wait()
	// The manager stops (or this replica lost the lease): the remote
	// watches go with it, not on in the background of a process that
	// starts another manager (a leader again later, or a test).
	r.mu.Lock()
	defer r.mu.Unlock()
	r.watchesStopped = true
	for key, w := range r.watches {
		w.stop()
		delete(r.watches, key)
		delete(r.creds, key)
	}
	return nil
}

func (r *Reconciler) serviceWorker(ctx context.Context) func() {
	return func() {
		for r.serviceOnce(ctx) {
		}
	}
}

// serviceOnce mirrors one queued change; false when the queue shut down.
func (r *Reconciler) serviceOnce(ctx context.Context) bool {
	key, quit := r.services.Get()
	if quit {
		return false
	}
	defer r.services.Done(key)
	if err := r.syncOne(ctx, key); err != nil {
		r.opts.Log.Debug("mirroring one service", "link", key.Link.Name, "service", key.Namespace+"/"+key.Name, "err", err)
		r.services.AddRateLimited(key)
	} else {
		r.services.Forget(key)
	}
	return true
}

// staleCache says whether every write err reports was refused for a
// cache behind the API server: a conflict, or an object already there.
func staleCache(err error) bool {
	var rej rejectedWrites
	if !errors.As(err, &rej) {
		return apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err)
	}
	for _, e := range rej {
		if !apierrors.IsConflict(e) && !apierrors.IsAlreadyExists(e) {
			return false
		}
	}
	return len(rej) > 0
}

// syncOne mirrors one remote Service of one Link. A Link that is not yet
// (or no longer) synced with its remote is left to the whole-Link pass.
func (r *Reconciler) syncOne(ctx context.Context, key serviceKey) error {
	began := time.Now()
	var link v1alpha1.Link
	if err := r.client.Get(ctx, key.Link, &link); err != nil {
		return client.IgnoreNotFound(err)
	}
	if !link.DeletionTimestamp.IsZero() || !controllerutil.ContainsFinalizer(&link, Finalizer) {
		return nil
	}
	// A Link deleted from here on is finalized only once this change is
	// written (finalize waits for singles), or it stopped the watch
	// before it is read here: no mirror outlives its Link.
	r.singles.RLock()
	defer r.singles.RUnlock()
	r.mu.Lock()
	w := r.watches[key.Link]
	r.mu.Unlock()
	if w == nil || !w.isSynced() {
		return nil
	}
	r.syncMu.Lock()
	release := sync.OnceFunc(r.syncMu.Unlock)
	need, err := r.syncService(ctx, &link, w, key.Namespace, key.Name, release)
	release()
	r.opts.Log.Debug("mirrored one service", "link", key.Link.Name, "service", key.Namespace+"/"+key.Name, "took", time.Since(began))
	if err != nil {
		if !staleCache(err) {
			// A stale cache is retried on its own (the caller requeues the
			// Service), and is no sync error; anything else may concern
			// the whole Link.
			r.opts.Metrics.SyncErrors.WithLabelValues(link.Spec.TargetClusterName).Inc()
			r.scheduleLink(key.Link, time.Second)
		}
		return err
	}
	switch need {
	case needLink:
		r.scheduleLink(key.Link, time.Second)
	case needCount:
		// Only the count: a whole-Link pass would hold up the next
		// single changes for as long as it plans every Service.
		r.scheduleCount(key.Link, time.Second)
	}
	return nil
}

// scheduleCount refreshes the Link's mirror count after d, once however
// often it is asked for meanwhile.
func (r *Reconciler) scheduleCount(key types.NamespacedName, d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.counting[key] {
		return
	}
	r.counting[key] = true
	time.AfterFunc(d, func() {
		r.mu.Lock()
		delete(r.counting, key)
		r.mu.Unlock()
		r.refreshCount(context.Background(), key)
	})
}

// refreshCount writes the number of mirrors the Link keeps, counted in
// the cache, when it moved and the Link is otherwise in sync; anything
// else is left to a whole-Link pass.
func (r *Reconciler) refreshCount(ctx context.Context, key types.NamespacedName) {
	var link v1alpha1.Link
	if err := r.client.Get(ctx, key, &link); err != nil || !link.DeletionTimestamp.IsZero() {
		return
	}
	cluster := link.Spec.TargetClusterName
	svcs, err := servicesInPlace(ctx, r.cache)
	if err != nil {
		r.enqueueLink(key)
		return
	}
	n := 0
	for _, s := range svcs {
		if owned(s, cluster) {
			n++
		}
	}
	if int32(n) == link.Status.MirroredServices {
		return
	}
	ready := meta.FindStatusCondition(link.Status.Conditions, v1alpha1.ConditionReady)
	if ready == nil || ready.Reason != ReasonSynced || link.Status.ObservedGeneration != link.Generation {
		r.enqueueLink(key)
		return
	}
	r.opts.Metrics.Mirrored.WithLabelValues(cluster).Set(float64(n))
	st := &status{generation: link.Generation, mirrors: int32(n)}
	st.set(metav1.ConditionTrue, ReasonSynced, fmt.Sprintf("%d mirrors in sync", n))
	r.writeStatus(ctx, &link, st)
}

// scheduleLink queues a whole-Link pass after d, once however often it is
// asked for meanwhile.
func (r *Reconciler) scheduleLink(key types.NamespacedName, d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.later[key] {
		return
	}
	r.later[key] = true
	time.AfterFunc(d, func() {
		r.mu.Lock()
		delete(r.later, key)
		r.mu.Unlock()
		r.enqueueLink(key)
	})
}

func (r *Reconciler) enqueueLink(key types.NamespacedName) {
	l := &v1alpha1.Link{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}}
	select {
	case r.events <- event.TypedGenericEvent[*v1alpha1.Link]{Object: l}:
	default: // a reconcile is queued already
	}
}

// Reconcile brings one Link's mirrors in line with its remote cluster.
func (r *Reconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	began := time.Now()
	defer func() { r.opts.Log.Debug("reconciled", "link", req.Name, "took", time.Since(began)) }()
	var link v1alpha1.Link
	if err := r.client.Get(ctx, req.NamespacedName, &link); err != nil {
		if apierrors.IsNotFound(err) {
			r.stopWatch(req.NamespacedName)
			// Gone without its finalizer's cleanup (the finalizer removed
			// by hand), its mirrors would stay: swept, unless another Link
			// targets the cluster.
			return reconcile.Result{}, r.sweepOrphans(ctx)
		}
		return reconcile.Result{}, err
	}
	if req.Namespace != v1alpha1.SystemNamespace {
		return reconcile.Result{}, nil // Links elsewhere are ignored
	}
	cluster := link.Spec.TargetClusterName
	if !link.DeletionTimestamp.IsZero() {
		return reconcile.Result{}, r.finalize(ctx, &link)
	}
	if !controllerutil.ContainsFinalizer(&link, Finalizer) {
		controllerutil.AddFinalizer(&link, Finalizer)
		if err := r.client.Update(ctx, &link); err != nil {
			return reconcile.Result{}, err
		}
		r.opts.Metrics.Writes.WithLabelValues("Link", "update").Inc()
	}

	st := &status{generation: link.Generation}
	defer func() { r.writeStatus(ctx, &link, st) }()

	// Two Links to one cluster (a Link renamed by creating the new one
	// first) would write the same mirrors: the older one mirrors, the
	// other waits for it to go and then takes its mirrors over as they
	// are.
	if senior, err := r.seniorLink(ctx, &link); err != nil {
		return reconcile.Result{}, err
	} else if senior != nil {
		r.stopWatch(req.NamespacedName)
		state := "not reconciled yet"
		if c := meta.FindStatusCondition(senior.Status.Conditions, v1alpha1.ConditionReady); c != nil {
			state = c.Reason
		}
		st.set(metav1.ConditionFalse, ReasonDuplicateTarget,
			fmt.Sprintf("Link %s already mirrors cluster %s (its state: %s); this Link takes over its mirrors as they are when it is deleted — delete it if this Link replaces it",
				senior.Name, cluster, state))
		st.keepSync = true
		return reconcile.Result{RequeueAfter: 5 * time.Second}, nil
	}

	w, err := r.watch(ctx, &link)
	var unstarted remoteStartError
	if errors.As(err, &unstarted) {
		// The credentials parsed; the remote API server refused them or
		// did not answer. Neither is a reason to change the credentials
		// when it is the network.
		r.opts.Metrics.RemoteUp.WithLabelValues(cluster).Set(0)
		r.opts.Metrics.SyncErrors.WithLabelValues(cluster).Inc()
		reason, msg := remoteReason(err, cluster)
		st.set(metav1.ConditionFalse, reason, msg)
		st.keepSync = true
		return reconcile.Result{RequeueAfter: 5 * time.Second}, nil
	}
	if err != nil {
		st.set(metav1.ConditionFalse, reasonOf(err), err.Error())
		r.opts.Metrics.RemoteUp.WithLabelValues(cluster).Set(0) // no credentials to reach it with
		r.opts.Metrics.SyncErrors.WithLabelValues(cluster).Inc()
		// Permanent until the Secret changes, which requeues the Link.
		return reconcile.Result{RequeueAfter: r.opts.Resync}, nil
	}
	if err := w.ping(ctx); err != nil {
		r.opts.Metrics.RemoteUp.WithLabelValues(cluster).Set(0)
		reason, msg := remoteReason(err, cluster)
		st.set(metav1.ConditionFalse, reason, msg)
		st.keepSync = true
		return reconcile.Result{RequeueAfter: 5 * time.Second}, nil
	}
	r.opts.Metrics.RemoteUp.WithLabelValues(cluster).Set(1)
	if !w.isSynced() {
		// A list that fails for one resource (the link reader's role
		// lost endpointslices) holds the first sync for good: the
		// reason is said, not left for the controller's log.
		if err := w.lastListError(); err != nil {
			reason, msg := remoteReason(fmt.Errorf("listing the remote cluster's exported services: %w", err), cluster)
			st.set(metav1.ConditionFalse, reason, msg)
		} else {
			st.set(metav1.ConditionFalse, ReasonWaitingForRemote, "listing the remote cluster's exported services")
		}
		st.keepSync = true
		return reconcile.Result{RequeueAfter: time.Second}, nil
	}
	r.syncMu.Lock()
	plan, err := r.sync(ctx, &link, w)
	r.syncMu.Unlock()
	if err != nil {
		r.opts.Metrics.SyncErrors.WithLabelValues(cluster).Inc()
		st.set(metav1.ConditionFalse, "SyncFailed", err.Error())
		st.keepSync = true
		return reconcile.Result{}, err
	}
	r.opts.Metrics.Mirrored.WithLabelValues(cluster).Set(float64(plan.Mirrors))
	st.mirrors, st.problems, st.synced = int32(plan.Mirrors), plan.Problems, true
	if len(plan.Problems) > 0 {
		st.set(metav1.ConditionFalse, ReasonSyncedWithProblems, fmt.Sprintf("%d mirrors in sync; %d problems (see status.problems)", plan.Mirrors, len(plan.Problems)))
		for _, p := range plan.Problems {
			r.recorder.Eventf(&link, nil, corev1.EventTypeWarning, ReasonSyncedWithProblems, "Sync", "%s", p)
		}
	} else {
		st.set(metav1.ConditionTrue, ReasonSynced, fmt.Sprintf("%d mirrors in sync", plan.Mirrors))
	}
	// Per-pod mirrors fill the headless mirrors' endpoints on the next
	// pass; anything else written is checked by its events and the resync
	// (another pass at once would hold up single changes for as long as it
	// plans every Service).
	if plan.CreatesPerPodMirrors {
		return reconcile.Result{RequeueAfter: 100 * time.Millisecond}, nil
	}
	return reconcile.Result{RequeueAfter: r.opts.Resync}, nil
}

// remoteStartError: the remote watch did not start, with credentials
// that parsed.
type remoteStartError struct{ err error }

func (e remoteStartError) Error() string { return e.err.Error() }
func (e remoteStartError) Unwrap() error { return e.err }

// remoteReason is the Ready condition's reason and message for a remote
// API server that failed a request: it rejected the credentials, or it
// did not answer.
func remoteReason(err error, cluster string) (string, string) {
	if apierrors.IsUnauthorized(err) || apierrors.IsForbidden(err) {
		return ReasonCredentialsRejected, fmt.Sprintf(
			"the API server of %s rejects the link's credentials (revoked or expired token, or missing RBAC); mirrors are kept as they are. Rerun `backbone --context %s link --cluster-name %s --create-token` and apply it here: %v",
			cluster, cluster, cluster, err)
	}
	return ReasonRemoteUnreachable, fmt.Sprintf("the API server of %s does not answer (mirrors are kept as they are): %v", cluster, err)
}

func reasonOf(err error) string {
	if errors.Is(err, linkcreds.ErrInsecure) {
		return ReasonInsecureCredentials
	}
	return ReasonInvalidCredentials
}

// watch returns the Link's remote watch, (re)starting it when the
// credentials changed.
func (r *Reconciler) watch(ctx context.Context, link *v1alpha1.Link) (*remoteWatch, error) {
	key := types.NamespacedName{Namespace: link.Namespace, Name: link.Name}
	var secret corev1.Secret
	if err := r.client.Get(ctx, types.NamespacedName{Namespace: link.Namespace, Name: link.Spec.CredentialsSecret.Name}, &secret); err != nil {
		r.stopWatch(key)
		return nil, fmt.Errorf("credentials Secret %s: %w", link.Spec.CredentialsSecret.Name, err)
	}
	raw := secret.Data[v1alpha1.KubeconfigKey]
	cfg, token, err := linkcreds.Parse(raw)
	if err != nil {
		r.stopWatch(key)
		return nil, fmt.Errorf("credentials Secret %s: %w", secret.Name, err)
	}
	r.mu.Lock()
	w, ok := r.watches[key]
	same := ok && r.creds[key] == string(raw)
	r.mu.Unlock()
	if same && !w.hasServiceExports && time.Since(w.discovered) >= r.opts.Resync {
		// A remote that did not serve ServiceExports may serve them now
		// (the MCS API installed later, or its group not yet registered
		// on an API server just started): asked again once a resync,
		// and the watch rebuilt with them when it does.
		w.discovered = time.Now()
		if serves, err := kube.ServesServiceExports(w.discovery); err == nil && serves {
			r.opts.Log.Info("remote cluster serves ServiceExports now; watching them", "link", link.Name)
			same = false
		}
	}
	if same {
		return w, nil
	}
	// Starting asks the remote API server (discovery), which may take
	// until the client's timeout: not under r.mu, which every single
	// change of every Link takes. A Link is never reconciled twice at
	// once, so no other start of this Link's watch runs meanwhile.
	nw, err := startRemoteWatch(link.Spec.TargetClusterName, cfg, token, func() { r.enqueueLink(key) }, func(namespace, name string) {
		r.services.Add(serviceKey{Link: key, Namespace: namespace, Name: name})
	})
	r.stopWatch(key) // built from credentials replaced since
	if err != nil {
		return nil, remoteStartError{err}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.watchesStopped || ctx.Err() != nil {
		// The manager stopped while the watch was starting (its discovery
		// answered late): it would run on in the background for good.
		nw.stop()
		return nil, fmt.Errorf("the remote watch of %s started after the manager stopped", link.Name)
	}
	r.watches[key], r.creds[key] = nw, string(raw)
	return nw, nil
}

func (r *Reconciler) stopWatch(key types.NamespacedName) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if w, ok := r.watches[key]; ok {
		w.stop()
		delete(r.watches, key)
		delete(r.creds, key)
	}
}
