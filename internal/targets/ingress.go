package targets

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
)

// IngressTargetLabel on an Ingress names the IngressTarget (in
// backbone-system) it was made for. The Ingress lives in the Service's
// namespace, so a finalizer — not an owner reference, which cannot cross
// namespaces — removes it with its target.
const (
	IngressTargetLabel = "backbone.dev/ingress-target"
	IngressFinalizer   = "backbone.dev/ingress"
)

// IngressOptions configure the IngressTarget reconciler.
type IngressOptions struct {
	ClusterName string
	// Domain makes the default host <service>.<cluster>.<Domain>.
	Domain string
	// ClassName is the Ingress's ingressClassName (default nginx).
	ClassName string
	// ClusterIssuer is cert-manager's ClusterIssuer for the host's
	// certificate (default letsencrypt); empty disables the annotation.
	ClusterIssuer string
	Log           *slog.Logger
}

// IngressReconciler keeps an Ingress for every IngressTarget served here.
type IngressReconciler struct {
	client client.Client
	opts   IngressOptions
}

// SetupIngress registers the IngressTarget reconciler with the manager.
func SetupIngress(mgr ctrl.Manager, opts IngressOptions) error {
	if opts.ClassName == "" {
		opts.ClassName = "nginx"
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	r := &IngressReconciler{client: mgr.GetClient(), opts: opts}
	toTarget := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
		name, ok := o.GetLabels()[IngressTargetLabel]
		if !ok {
			return nil
		}
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: v1alpha1.SystemNamespace, Name: name}}}
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("ingresstarget").
		For(&v1alpha1.IngressTarget{}).
		Watches(&networkingv1.Ingress{}, toTarget).
		WithOptions(controller.Options{SkipNameValidation: ptr.To(true)}).
		Complete(r)
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

// Reconcile serves one IngressTarget.
func (r *IngressReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var it v1alpha1.IngressTarget
	if err := r.client.Get(ctx, req.NamespacedName, &it); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	ing := &networkingv1.Ingress{ObjectMeta: metav1.ObjectMeta{Namespace: it.Spec.Namespace, Name: it.Name}}
	if !it.DeletionTimestamp.IsZero() {
		if err := r.deleteIngress(ctx, &it, ing); err != nil {
			return reconcile.Result{}, err
		}
		controllerutil.RemoveFinalizer(&it, IngressFinalizer)
		return reconcile.Result{}, client.IgnoreNotFound(r.client.Update(ctx, &it))
	}
	if servedFrom(&it) != r.opts.ClusterName {
		return reconcile.Result{}, r.setStatus(ctx, &it, metav1.ConditionFalse, "OtherCluster",
			fmt.Sprintf("served by the ingress of %s", servedFrom(&it)), "", "")
	}
	host := Host(&it, r.opts.Domain)
	if host == "" {
		return reconcile.Result{}, r.setStatus(ctx, &it, metav1.ConditionFalse, "NoHost",
			"spec.host is empty and the controller has no --ingress-domain for the default <service>.<cluster>.<domain>", "", "")
	}
	if !controllerutil.ContainsFinalizer(&it, IngressFinalizer) {
		controllerutil.AddFinalizer(&it, IngressFinalizer)
		if err := r.client.Update(ctx, &it); err != nil {
			return reconcile.Result{}, err
		}
	}
	var existing networkingv1.Ingress
	err := r.client.Get(ctx, client.ObjectKeyFromObject(ing), &existing)
	if err == nil && existing.Labels[IngressTargetLabel] != it.Name {
		return reconcile.Result{}, r.setStatus(ctx, &it, metav1.ConditionFalse, "IngressConflict",
			fmt.Sprintf("Ingress %s/%s exists and is not backbone's", existing.Namespace, existing.Name), host, "")
	}
	if err != nil && !apierrors.IsNotFound(err) {
		return reconcile.Result{}, err
	}
	backend := it.Spec.Service
	if it.Spec.Cluster != r.opts.ClusterName {
		backend = it.Spec.Service + "-" + it.Spec.Cluster // the mirror
	}
	if _, err := controllerutil.CreateOrUpdate(ctx, r.client, ing, func() error {
		desired := IngressFor(&it, host, backend, r.opts)
		ing.Labels = desired.Labels
		ing.Annotations = desired.Annotations
		ing.Spec = desired.Spec
		return nil
	}); err != nil {
		if apierrors.IsNotFound(err) || apierrors.IsForbidden(err) {
			return reconcile.Result{}, r.setStatus(ctx, &it, metav1.ConditionFalse, "IngressFailed", err.Error(), host, "")
		}
		return reconcile.Result{}, err
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
	return reconcile.Result{}, r.setStatus(ctx, &it, metav1.ConditionTrue, "Serving", msg, host, address)
}

// IngressFor is the Ingress of an IngressTarget. Only backbone's own
// strings go into annotations; no user value reaches a controller-specific
// (nginx.ingress.kubernetes.io/*) annotation.
func IngressFor(it *v1alpha1.IngressTarget, host, backend string, opts IngressOptions) *networkingv1.Ingress {
	ann := map[string]string{
		"external-dns.kubernetes.io/hostname":       host,
		"external-dns.alpha.kubernetes.io/hostname": host,
	}
	if opts.ClusterIssuer != "" {
		ann["cert-manager.io/cluster-issuer"] = opts.ClusterIssuer
	}
	return &networkingv1.Ingress{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: it.Spec.Namespace, Name: it.Name,
			Labels: map[string]string{
				IngressTargetLabel:      it.Name,
				v1alpha1.ManagedByLabel: v1alpha1.ManagedByValue,
				v1alpha1.SquadLabel:     it.Spec.Squad,
			},
			Annotations: ann,
		},
		Spec: networkingv1.IngressSpec{
			IngressClassName: ptr.To(opts.ClassName),
			TLS:              []networkingv1.IngressTLS{{Hosts: []string{host}, SecretName: strings.ReplaceAll(host, ".", "-") + "-tls"}},
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

func (r *IngressReconciler) deleteIngress(ctx context.Context, it *v1alpha1.IngressTarget, ing *networkingv1.Ingress) error {
	var existing networkingv1.Ingress
	if err := r.client.Get(ctx, client.ObjectKeyFromObject(ing), &existing); err != nil {
		return client.IgnoreNotFound(err)
	}
	if existing.Labels[IngressTargetLabel] != it.Name {
		return nil // not ours
	}
	return client.IgnoreNotFound(r.client.Delete(ctx, &existing, client.Preconditions{UID: &existing.UID}))
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
