package mirror

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
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

// Reconciler keeps the mirrors of every Link.
type Reconciler struct {
	client   client.Client
	opts     Options
	recorder events.EventRecorder
	events   chan event.TypedGenericEvent[*v1alpha1.Link]

	mu      sync.Mutex
	watches map[types.NamespacedName]*remoteWatch
	creds   map[types.NamespacedName]string // what each watch was built from
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
		client: mgr.GetClient(), opts: opts,
		recorder: mgr.GetEventRecorder("backbone-mirror"),
		events:   make(chan event.TypedGenericEvent[*v1alpha1.Link], 1024),
		watches:  map[types.NamespacedName]*remoteWatch{}, creds: map[types.NamespacedName]string{},
	}
	toAllLinks := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, _ client.Object) []reconcile.Request {
		return r.allLinks(ctx)
	})
	toLinkOfMirror := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
		return r.linksOfCluster(ctx, o.GetLabels()[v1alpha1.MirroredFromLabel])
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("mirror").
		For(&v1alpha1.Link{}).
		Watches(&corev1.Service{}, toLinkOfMirror).
		Watches(&discoveryv1.EndpointSlice{}, toAllLinks). // the gateway's own endpoints feed every mirror
		Watches(&corev1.Secret{}, toAllLinks).
		Watches(&corev1.Namespace{}, toAllLinks).
		WatchesRawSource(source.Channel(r.events, &handler.TypedEnqueueRequestForObject[*v1alpha1.Link]{})).
		// One Link at a time: port allocation reads every Link's ports.
		// A restarted controller in the same process (tests) reuses the name.
		WithOptions(controller.Options{MaxConcurrentReconciles: 1, SkipNameValidation: ptr.To(true)}).
		Complete(r)
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

// Reconcile brings one Link's mirrors in line with its remote cluster.
func (r *Reconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	began := time.Now()
	defer func() { r.opts.Log.Debug("reconciled", "link", req.Name, "took", time.Since(began)) }()
	var link v1alpha1.Link
	if err := r.client.Get(ctx, req.NamespacedName, &link); err != nil {
		if apierrors.IsNotFound(err) {
			r.stopWatch(req.NamespacedName)
			return reconcile.Result{}, nil
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

	w, err := r.watch(ctx, &link)
	if err != nil {
		st.set(metav1.ConditionFalse, reasonOf(err), err.Error())
		r.opts.Metrics.SyncErrors.WithLabelValues(cluster).Inc()
		// Permanent until the Secret changes, which requeues the Link.
		return reconcile.Result{RequeueAfter: r.opts.Resync}, nil
	}
	if err := w.ping(ctx); err != nil {
		r.opts.Metrics.RemoteUp.WithLabelValues(cluster).Set(0)
		if apierrors.IsUnauthorized(err) || apierrors.IsForbidden(err) {
			st.set(metav1.ConditionFalse, ReasonCredentialsRejected, fmt.Sprintf(
				"the API server of %s rejects the link's credentials (revoked or expired token, or missing RBAC); mirrors are kept as they are. Rerun `backbone --context %s link --cluster-name %s --create-token` and apply it here: %v",
				cluster, cluster, cluster, err))
		} else {
			st.set(metav1.ConditionFalse, ReasonRemoteUnreachable, fmt.Sprintf("the API server of %s does not answer (mirrors are kept as they are): %v", cluster, err))
		}
		st.keepSync = true
		return reconcile.Result{RequeueAfter: 5 * time.Second}, nil
	}
	r.opts.Metrics.RemoteUp.WithLabelValues(cluster).Set(1)
	if !w.isSynced() {
		st.set(metav1.ConditionFalse, ReasonWaitingForRemote, "listing the remote cluster's exported services")
		st.keepSync = true
		return reconcile.Result{RequeueAfter: time.Second}, nil
	}
	plan, err := r.sync(ctx, &link, w)
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
	// Per-pod mirrors fill the headless mirrors' endpoints on the next pass.
	if !plan.Empty() {
		return reconcile.Result{RequeueAfter: 100 * time.Millisecond}, nil
	}
	return reconcile.Result{RequeueAfter: r.opts.Resync}, nil
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
	defer r.mu.Unlock()
	if w, ok := r.watches[key]; ok && r.creds[key] == string(raw) {
		return w, nil
	} else if ok {
		w.stop()
	}
	w, err := startRemoteWatch(link.Spec.TargetClusterName, cfg, token, func() {
		l := &v1alpha1.Link{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}}
		select {
		case r.events <- event.TypedGenericEvent[*v1alpha1.Link]{Object: l}:
		default: // a reconcile is queued already
		}
	})
	if err != nil {
		return nil, err
	}
	r.watches[key], r.creds[key] = w, string(raw)
	return w, nil
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
