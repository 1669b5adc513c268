// Package export gives the MCS API's ServiceExports of this cluster their
// status conditions. Linked clusters pull exports through their link
// readers, which may only read; the exporting cluster's own controller is
// the one that tells the owner of a ServiceExport whether it works.
package export

import (
	"context"
	"fmt"
	"log/slog"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
)

// Setup registers the reconciler when the cluster serves ServiceExports;
// without the CRD there is nothing to give status to.
func Setup(mgr ctrl.Manager, clusterName string, log *slog.Logger) error {
	gk := schema.GroupKind{Group: mcsv1beta1.GroupVersion.Group, Kind: "ServiceExport"}
	if _, err := mgr.GetRESTMapper().RESTMapping(gk, mcsv1beta1.GroupVersion.Version); err != nil {
		if meta.IsNoMatchError(err) {
			log.Info("the ServiceExport CRD is not installed: exports are by label only (install it and restart to use ServiceExports)")
			return nil
		}
		return fmt.Errorf("looking up ServiceExports: %w", err)
	}
	r := &Reconciler{client: mgr.GetClient(), cluster: clusterName}
	return ctrl.NewControllerManagedBy(mgr).
		Named("serviceexport").
		For(&mcsv1beta1.ServiceExport{}).
		// A Service's ServiceExport has its namespace and name.
		Watches(&corev1.Service{}, handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
			return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: o.GetName()}}}
		})).
		WithOptions(controller.Options{SkipNameValidation: ptr.To(true)}).
		Complete(r)
}

// Reconciler writes the Valid, Ready and Conflict conditions.
type Reconciler struct {
	client  client.Client
	cluster string
}

// Reconcile judges one ServiceExport against its Service.
func (r *Reconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var se mcsv1beta1.ServiceExport
	if err := r.client.Get(ctx, req.NamespacedName, &se); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	var svc *corev1.Service
	var s corev1.Service
	switch err := r.client.Get(ctx, req.NamespacedName, &s); {
	case err == nil:
		svc = &s
	case client.IgnoreNotFound(err) != nil:
		return reconcile.Result{}, err
	}
	want := Conditions(svc, req.NamespacedName, r.cluster, se.Generation)
	conds := append([]metav1.Condition(nil), se.Status.Conditions...)
	for _, c := range want {
		meta.SetStatusCondition(&conds, c)
	}
	if equality.Semantic.DeepEqual(conds, se.Status.Conditions) {
		return reconcile.Result{}, nil
	}
	se.Status.Conditions = conds
	return reconcile.Result{}, r.client.Status().Update(ctx, &se)
}

// Conditions are what a ServiceExport of key says, given its Service (nil
// when there is none), in the exporting cluster named cluster.
func Conditions(svc *corev1.Service, key types.NamespacedName, cluster string, generation int64) []metav1.Condition {
	cond := func(t mcsv1beta1.ServiceExportConditionType, st metav1.ConditionStatus, reason mcsv1beta1.ServiceExportConditionReason, msg string) metav1.Condition {
		c := mcsv1beta1.NewServiceExportCondition(t, st, reason, msg)
		c.ObservedGeneration = generation
		return c
	}
	noConflict := cond(mcsv1beta1.ServiceExportConditionConflict, metav1.ConditionFalse, "NoConflicts",
		fmt.Sprintf("each cluster's export has a mirror of its own (%s-<cluster>); nothing is merged across clusters", key.Name))
	invalid := func(reason mcsv1beta1.ServiceExportConditionReason, msg string) []metav1.Condition {
		return []metav1.Condition{
			cond(mcsv1beta1.ServiceExportConditionValid, metav1.ConditionFalse, reason, msg),
			cond(mcsv1beta1.ServiceExportConditionReady, metav1.ConditionFalse, mcsv1beta1.ServiceExportReasonFailed, "not exported: "+msg),
			noConflict,
		}
	}
	switch {
	case svc == nil:
		return invalid(mcsv1beta1.ServiceExportReasonNoService, fmt.Sprintf("there is no Service %s", key))
	case svc.Spec.Type == corev1.ServiceTypeExternalName:
		return invalid(mcsv1beta1.ServiceExportReasonInvalidServiceType, fmt.Sprintf("Service %s is of type ExternalName, which cannot be exported", key))
	case svc.Labels[v1alpha1.MirroredFromLabel] != "":
		return invalid(mcsv1beta1.ServiceExportReasonInvalidServiceType, fmt.Sprintf("Service %s is the mirror of a service of cluster %s; mirrors are never exported again, so that exports cannot loop between clusters",
			key, svc.Labels[v1alpha1.MirroredFromLabel]))
	case len(svc.Spec.Ports) > 0 && !hasTCPPort(svc):
		return invalid(mcsv1beta1.ServiceExportReasonInvalidServiceType, fmt.Sprintf("Service %s has no TCP port, and the gateways carry TCP only: no cluster can mirror it", key))
	}
	return []metav1.Condition{
		cond(mcsv1beta1.ServiceExportConditionValid, metav1.ConditionTrue, mcsv1beta1.ServiceExportReasonValid, fmt.Sprintf("Service %s exists", key)),
		cond(mcsv1beta1.ServiceExportConditionReady, metav1.ConditionTrue, mcsv1beta1.ServiceExportReasonReady,
			fmt.Sprintf("linked clusters pull it through their links and mirror it as %s/%s-%s", key.Namespace, key.Name, cluster)),
		noConflict,
	}
}

// hasTCPPort says whether svc has a port the gateways can carry.
func hasTCPPort(svc *corev1.Service) bool {
	for _, p := range svc.Spec.Ports {
		if p.Protocol == "" || p.Protocol == corev1.ProtocolTCP {
			return true
		}
	}
	return false
}
