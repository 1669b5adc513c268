package targets

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
)

// IngressTargetLabel on an Ingress or HTTPRoute names the IngressTarget
// (in backbone-system) it was made for. The object lives in the Service's
// namespace, so a finalizer — not an owner reference, which cannot cross
// namespaces — removes it with its target.
const (
	IngressTargetLabel = "backbone.dev/ingress-target"
	IngressFinalizer   = "backbone.dev/ingress"
)

// gatewayRecheck is how often a served HTTPRoute's Gateway is re-read for
// its published address.
const gatewayRecheck = 5 * time.Minute

// IngressOptions configure the IngressTarget reconciler.
type IngressOptions struct {
	ClusterName string
	// Domain makes the default host <service>.<cluster>.<Domain>.
	Domain string
	// Mode is what a target becomes: an Ingress (default) or an HTTPRoute
	// on Gateway. The other kind, when backbone made one earlier, is
	// removed once the new object is written.
	Mode IngressMode
	// Gateway is the Gateway (and optionally listener) HTTPRoutes attach
	// to; required in httproute mode.
	Gateway GatewayRef
	// ClassName is the Ingress's ingressClassName (default nginx).
	ClassName string
	// ClusterIssuer is cert-manager's ClusterIssuer for the host's
	// certificate (default letsencrypt); empty disables the annotation.
	// Ingress mode only: with Gateway API, TLS is the Gateway's.
	ClusterIssuer string
	Log           *slog.Logger
}

// IngressReconciler keeps an Ingress or HTTPRoute for every IngressTarget
// served here.
type IngressReconciler struct {
	client client.Client
	// reader reads from the API server: Gateways (get only) and, in
	// ingress mode, HTTPRoutes left from httproute mode, without starting
	// informers on kinds the controller does not watch.
	reader client.Reader
	opts   IngressOptions
}

// SetupIngress registers the IngressTarget reconciler with the manager.
func SetupIngress(mgr ctrl.Manager, opts IngressOptions) error {
	if opts.ClassName == "" {
		opts.ClassName = "nginx"
	}
	if opts.Mode == "" {
		opts.Mode = IngressModeIngress
	}
	if _, err := ParseIngressMode(string(opts.Mode)); err != nil {
		return err
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	r := &IngressReconciler{client: mgr.GetClient(), reader: mgr.GetAPIReader(), opts: opts}
	toTarget := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
		name, ok := o.GetLabels()[IngressTargetLabel]
		if !ok {
			return nil
		}
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: v1alpha1.SystemNamespace, Name: name}}}
	})
	b := ctrl.NewControllerManagedBy(mgr).
		Named("ingresstarget").
		For(&v1alpha1.IngressTarget{}).
		// A host's claims depend on the specs of the targets on it, not
		// on their status.
		Watches(&v1alpha1.IngressTarget{}, handler.EnqueueRequestsFromMapFunc(r.sameHost), builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&networkingv1.Ingress{}, toTarget)
	if opts.Mode == IngressModeHTTPRoute {
		if opts.Gateway.Name == "" || opts.Gateway.Namespace == "" {
			return errors.New("ingress mode httproute needs a Gateway (--gateway-ref namespace/name[/sectionName])")
		}
		if _, err := mgr.GetRESTMapper().RESTMapping(schema.GroupKind{Group: gatewayv1.GroupName, Kind: "HTTPRoute"}, gatewayv1.GroupVersion.Version); err != nil {
			return fmt.Errorf("ingress mode httproute needs the Gateway API CRDs (HTTPRoute %s): %w", gatewayv1.GroupVersion, err)
		}
		b = b.Watches(&gatewayv1.HTTPRoute{}, toTarget)
		if opts.ClusterIssuer != "" {
			opts.Log.Info("ingress mode httproute: the cluster issuer is not used; TLS and its certificates are the Gateway's (cert-manager's Gateway annotation)", "cluster_issuer", opts.ClusterIssuer)
		}
	}
	return b.WithOptions(controller.Options{SkipNameValidation: ptr.To(true)}).Complete(r)
}

// Host is the host an IngressTarget is served on: its own, or
// <service>.<cluster>.<domain>.
func Host(it *v1alpha1.IngressTarget, domain string) string {
	if it.Spec.Host != "" {
		return it.Spec.Host
	}
	if domain == "" {
		return ""
	}
	return it.Spec.Service + "." + it.Spec.Cluster + "." + strings.TrimSuffix(domain, ".")
}

// servedFrom is the cluster whose ingress controller serves the target.
func servedFrom(it *v1alpha1.IngressTarget) string {
	if it.Spec.ExposeFrom != "" {
		return it.Spec.ExposeFrom
	}
	return it.Spec.Cluster
}

// outcome is what serving a target came to: its Ready condition, the
// published address, whether the object was written (only then is the
// object of the other kind removed), and when to look again.
type outcome struct {
	status          metav1.ConditionStatus
	reason, message string
	address         string
	written         bool
	requeue         time.Duration
}

// Reconcile serves one IngressTarget.
func (r *IngressReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var it v1alpha1.IngressTarget
	if err := r.client.Get(ctx, req.NamespacedName, &it); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if !it.DeletionTimestamp.IsZero() {
		if err := r.deleteOwned(ctx, &it, "", IngressModeIngress, IngressModeHTTPRoute); err != nil {
			return reconcile.Result{}, err
		}
		controllerutil.RemoveFinalizer(&it, IngressFinalizer)
		return reconcile.Result{}, client.IgnoreNotFound(r.client.Update(ctx, &it))
	}
	if servedFrom(&it) != r.opts.ClusterName {
		// It may have been served here before exposeFrom changed.
		if err := r.deleteOwned(ctx, &it, "", IngressModeIngress, IngressModeHTTPRoute); err != nil {
			return reconcile.Result{}, err
		}
		return reconcile.Result{}, r.setStatus(ctx, &it, metav1.ConditionFalse, "OtherCluster",
			fmt.Sprintf("served by the ingress of %s", servedFrom(&it)), "", "")
	}
	host := Host(&it, r.opts.Domain)
	if host == "" {
		return reconcile.Result{}, r.setStatus(ctx, &it, metav1.ConditionFalse, "NoHost",
			"spec.host is empty and the controller has no --ingress-domain for the default <service>.<cluster>.<domain>", "", "")
	}
	older, err := r.olderClaim(ctx, &it, host)
	if err != nil {
		return reconcile.Result{}, err
	}
	if older != nil {
		// One host, two Ingresses: the ingress controller would serve
		// either, and cert-manager keep two certificates. The younger
		// target gives way (and what it served before goes).
		if err := r.deleteOwned(ctx, &it, "", IngressModeIngress, IngressModeHTTPRoute); err != nil {
			return reconcile.Result{}, err
		}
		return reconcile.Result{}, r.setStatus(ctx, &it, metav1.ConditionFalse, "HostConflict",
			fmt.Sprintf("host %s is IngressTarget %s/%s's, which claimed it first; give this target another spec.host", host, older.Namespace, older.Name), host, "")
	}
	if !controllerutil.ContainsFinalizer(&it, IngressFinalizer) {
		controllerutil.AddFinalizer(&it, IngressFinalizer)
		if err := r.client.Update(ctx, &it); err != nil {
			return reconcile.Result{}, err
		}
	}
	backend := it.Spec.Service
	if it.Spec.Cluster != r.opts.ClusterName {
		backend = it.Spec.Service + "-" + it.Spec.Cluster // the mirror
	}
	var o outcome
	own, other := r.opts.Mode, IngressModeHTTPRoute
	if r.opts.Mode == IngressModeHTTPRoute {
		o, err = r.serveRoute(ctx, &it, host, backend)
		other = IngressModeIngress
	} else {
		o, err = r.serveIngress(ctx, &it, host, backend)
	}
	if err != nil {
		return reconcile.Result{}, err
	}
	// The new object is in place before the old ones go — the other
	// kind's, and this kind's in a namespace the target was in before:
	// the host is never left without one.
	if o.written {
		if err := r.deleteOwned(ctx, &it, "", other); err != nil {
			return reconcile.Result{}, err
		}
		if err := r.deleteOwned(ctx, &it, it.Spec.Namespace, own); err != nil {
			return reconcile.Result{}, err
		}
	}
	return reconcile.Result{RequeueAfter: o.requeue}, r.setStatus(ctx, &it, o.status, o.reason, o.message, host, o.address)
}

// serveIngress keeps the target's Ingress and reads the address its
// controller published.
func (r *IngressReconciler) serveIngress(ctx context.Context, it *v1alpha1.IngressTarget, host, backend string) (outcome, error) {
	ing := &networkingv1.Ingress{ObjectMeta: metav1.ObjectMeta{Namespace: it.Spec.Namespace, Name: it.Name}}
	var existing networkingv1.Ingress
	err := r.client.Get(ctx, client.ObjectKeyFromObject(ing), &existing)
	if err == nil && existing.Labels[IngressTargetLabel] != it.Name {
		return outcome{status: metav1.ConditionFalse, reason: "IngressConflict",
			message: fmt.Sprintf("Ingress %s/%s exists and is not backbone's", existing.Namespace, existing.Name)}, nil
	}
	if err != nil && !apierrors.IsNotFound(err) {
		return outcome{}, err
	}
	secret, err := r.tlsSecretName(ctx, it, host)
	if err != nil {
		return outcome{}, err
	}
	if _, err := controllerutil.CreateOrUpdate(ctx, r.client, ing, func() error {
		desired := IngressFor(it, host, backend, secret, r.opts)
		ing.Labels = desired.Labels
		ing.Annotations = desired.Annotations
		ing.Spec = desired.Spec
		return nil
	}); err != nil {
		if apierrors.IsNotFound(err) || apierrors.IsForbidden(err) {
			return outcome{status: metav1.ConditionFalse, reason: "IngressFailed", message: err.Error()}, nil
		}
		if apierrors.IsInvalid(err) {
			// Permanent until the target (or the controller's options)
			// changes, and either brings a new reconcile: reported, not
			// retried.
			return outcome{status: metav1.ConditionFalse, reason: "IngressInvalid", message: invalidMessage(it, backend, err)}, nil
		}
		return outcome{}, err
	}
	address := ""
	for _, lb := range ing.Status.LoadBalancer.Ingress {
		if address = lb.IP; address == "" {
			address = lb.Hostname
		}
		if address != "" {
			break
		}
	}
	msg := fmt.Sprintf("Ingress %s/%s serves https://%s/ from Service %s", ing.Namespace, ing.Name, host, backend)
	if address == "" {
		msg += "; the ingress controller has not published an address yet"
	}
	return outcome{status: metav1.ConditionTrue, reason: "Serving", message: msg, address: address, written: true}, nil
}

// ownLabels mark the objects made for a target, the only ones backbone
// changes or removes.
func ownLabels(it *v1alpha1.IngressTarget) map[string]string {
	return map[string]string{
		IngressTargetLabel:      it.Name,
		v1alpha1.ManagedByLabel: v1alpha1.ManagedByValue,
		v1alpha1.SquadLabel:     it.Spec.Squad,
	}
}

// dnsAnnotations are external-dns's hostname annotation under both its
// current and its legacy prefix; external-dns's Ingress and
// gateway-httproute sources read both.
func dnsAnnotations(host string) map[string]string {
	return map[string]string{
		"external-dns.kubernetes.io/hostname":       host,
		"external-dns.alpha.kubernetes.io/hostname": host,
	}
}

// IngressFor is the Ingress of an IngressTarget, its certificate kept in
// the Secret secretName. Only backbone's own
// strings go into annotations; no user value reaches a controller-specific
// (nginx.ingress.kubernetes.io/*) annotation.
func IngressFor(it *v1alpha1.IngressTarget, host, backend, secretName string, opts IngressOptions) *networkingv1.Ingress {
	ann := dnsAnnotations(host)
	if opts.ClusterIssuer != "" {
		ann["cert-manager.io/cluster-issuer"] = opts.ClusterIssuer
	}
	return &networkingv1.Ingress{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: it.Spec.Namespace, Name: it.Name,
			Labels:      ownLabels(it),
			Annotations: ann,
		},
		Spec: networkingv1.IngressSpec{
			IngressClassName: ptr.To(opts.ClassName),
			TLS:              []networkingv1.IngressTLS{{Hosts: []string{host}, SecretName: secretName}},
			Rules: []networkingv1.IngressRule{{
				Host: host,
				IngressRuleValue: networkingv1.IngressRuleValue{HTTP: &networkingv1.HTTPIngressRuleValue{
					Paths: []networkingv1.HTTPIngressPath{{
						Path:     "/",
						PathType: ptr.To(networkingv1.PathTypePrefix),
						Backend: networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{
							Name: backend, Port: networkingv1.ServiceBackendPort{Number: it.Spec.Port},
						}},
					}},
				}},
			}},
		},
	}
}

// deleteOwned removes the target's objects of the given kinds, in every
// namespace but keep ("" for all): found by label, not by spec.namespace,
// which may name another namespace than the one they were made in.
// HTTPRoutes are read from the API server in ingress mode: then nothing
// watches them, and without the Gateway API CRDs there are none.
func (r *IngressReconciler) deleteOwned(ctx context.Context, it *v1alpha1.IngressTarget, keep string, kinds ...IngressMode) error {
	mine := client.MatchingLabels{IngressTargetLabel: it.Name}
	for _, kind := range kinds {
		var objs []client.Object
		switch kind {
		case IngressModeHTTPRoute:
			var reader client.Reader = r.reader
			if r.opts.Mode == IngressModeHTTPRoute {
				reader = r.client
			}
			var list gatewayv1.HTTPRouteList
			if err := reader.List(ctx, &list, mine); err != nil {
				if meta.IsNoMatchError(err) {
					continue
				}
				return err
			}
			for i := range list.Items {
				objs = append(objs, &list.Items[i])
			}
		default:
			var list networkingv1.IngressList
			if err := r.client.List(ctx, &list, mine); err != nil {
				return err
			}
			for i := range list.Items {
				objs = append(objs, &list.Items[i])
			}
		}
		for _, obj := range objs {
			if obj.GetName() != it.Name || (keep != "" && obj.GetNamespace() == keep) {
				continue
			}
			uid := obj.GetUID()
			if err := r.client.Delete(ctx, obj, client.Preconditions{UID: &uid}); client.IgnoreNotFound(err) != nil {
				return err
			}
		}
	}
	return nil
}

func (r *IngressReconciler) setStatus(ctx context.Context, it *v1alpha1.IngressTarget, st metav1.ConditionStatus, reason, msg, host, address string) error {
	cur := meta.FindStatusCondition(it.Status.Conditions, v1alpha1.ConditionReady)
	if cur != nil && cur.Status == st && cur.Reason == reason && cur.Message == msg &&
		it.Status.Host == host && it.Status.Address == address && it.Status.ObservedGeneration == it.Generation {
		return nil
	}
	patch := client.MergeFrom(it.DeepCopy())
	meta.SetStatusCondition(&it.Status.Conditions, metav1.Condition{Type: v1alpha1.ConditionReady, Status: st, Reason: reason, Message: msg, ObservedGeneration: it.Generation})
	it.Status.ObservedGeneration, it.Status.Host, it.Status.Address = it.Generation, host, address
	return client.IgnoreNotFound(r.client.Status().Patch(ctx, it, patch))
}
