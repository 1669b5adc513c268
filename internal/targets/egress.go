// Package targets reconciles the squads' declarations: an EgressTarget
// becomes, in its environment's cluster, an exported Service whose
// endpoints are the local gateway (which originates TLS to the target), so
// every linked cluster mirrors it as <hostName>-<environment>; an
// IngressTarget becomes an Ingress with DNS and certificate annotations, or
// an HTTPRoute on a configured Gateway (which holds TLS) with DNS
// annotations.
package targets

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
	"github.com/backbone-mesh/backbone/internal/mirror"
	"github.com/backbone-mesh/backbone/internal/origin"
)

// The egress contract with the gateway: the Service standing for a target
// carries the target's name in EgressTargetLabel and the gateway port
// allocated to it in EgressPortAnnotation.
const (
	EgressTargetLabel    = "backbone.dev/egress-target"
	EgressPortAnnotation = "backbone.dev/egress-port"
)

// EgressOptions configure the EgressTarget reconciler.
type EgressOptions struct {
	// ClusterName is this cluster: only targets whose environment it is
	// are served here.
	ClusterName string
	// Ports is the gateway port range egress targets get ports from
	// (default 30000-30999).
	Ports struct{ Low, High int32 }
	// ProbePeriod is how often the gateways' probe results are read when
	// no gateway says how often it probes (default 10s).
	ProbePeriod time.Duration
	// GatewayAdminPort is the local gateways' admin port, where each
	// serves its latest probe of every target (default 9090).
	GatewayAdminPort int32
	Log              *slog.Logger
}

// EgressReconciler keeps the Service and EndpointSlice of every EgressTarget
// served by this cluster.
type EgressReconciler struct {
	client client.Client
	opts   EgressOptions
	probes *probeReader

	portMu sync.Mutex
	// nextPort is where the search for a new gateway port starts: after
	// the last one handed out (see port).
	nextPort int32
}

// SetupEgress registers the EgressTarget reconciler with the manager.
func SetupEgress(mgr ctrl.Manager, opts EgressOptions) error {
	if opts.Ports.Low == 0 {
		opts.Ports.Low, opts.Ports.High = 30000, 30999
	}
	if opts.ProbePeriod == 0 {
		opts.ProbePeriod = 10 * time.Second
	}
	if opts.GatewayAdminPort == 0 {
		opts.GatewayAdminPort = 9090
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	r := &EgressReconciler{client: mgr.GetClient(), opts: opts, probes: newProbeReader(opts.GatewayAdminPort)}
	allTargets := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
		if o.GetNamespace() != v1alpha1.SystemNamespace || o.GetLabels()[discoveryv1.LabelServiceName] != v1alpha1.GatewayServiceName {
			return nil
		}
		var list v1alpha1.EgressTargetList
		if err := r.client.List(ctx, &list); err != nil {
			return nil
		}
		var out []reconcile.Request
		for _, et := range list.Items {
			out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&et)})
		}
		return out
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("egresstarget").
		For(&v1alpha1.EgressTarget{}).
		Owns(&corev1.Service{}).
		Owns(&discoveryv1.EndpointSlice{}).
		Watches(&discoveryv1.EndpointSlice{}, allTargets). // the gateway's endpoints
		// One at a time: port allocation reads every target's port.
		WithOptions(controller.Options{MaxConcurrentReconciles: 1, SkipNameValidation: ptr.To(true)}).
		Complete(r)
}

// Reconcile serves one EgressTarget.
func (r *EgressReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var et v1alpha1.EgressTarget
	if err := r.client.Get(ctx, req.NamespacedName, &et); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if !et.DeletionTimestamp.IsZero() {
		return reconcile.Result{}, nil // owner references remove the Service and slice
	}
	// A target declared wrong changes nothing, here or in the cluster
	// that serves it (see invalidSpec).
	if msg := invalidSpec(&et); msg != "" {
		return reconcile.Result{}, r.setStatus(ctx, &et, metav1.ConditionFalse, "InvalidSpec", msg, nil, nil)
	}
	if et.Spec.Environment != r.opts.ClusterName {
		// Served by another cluster, which exports it; this one mirrors it.
		// It may have been served here before its environment changed.
		if err := r.deleteStale(ctx, &et, ""); err != nil {
			return reconcile.Result{}, err
		}
		return reconcile.Result{}, r.setStatus(ctx, &et, metav1.ConditionFalse, "OtherEnvironment",
			fmt.Sprintf("served by the gateway of %s; here it is the mirror %s-%s", et.Spec.Environment, et.Spec.HostName, et.Spec.Environment), nil, nil)
	}
	port, err := r.port(ctx, &et)
	if err != nil {
		return reconcile.Result{}, r.setStatus(ctx, &et, metav1.ConditionFalse, "NoGatewayPort", err.Error(), nil, nil)
	}
	gw, err := mirror.LocalGateway(ctx, r.client)
	if err != nil {
		return reconcile.Result{}, err
	}
	svc, err := r.service(ctx, &et, port, gw)
	var conflict *conflictError
	if errors.As(err, &conflict) {
		return reconcile.Result{}, r.setStatus(ctx, &et, metav1.ConditionFalse, "ServiceConflict", conflict.msg, nil, nil)
	}
	if err != nil {
		return reconcile.Result{}, err
	}
	gateways := gw.Addresses
	if err := r.slice(ctx, &et, svc, port, gw); err != nil {
		return reconcile.Result{}, err
	}
	// After a change of hostName the old Service and slice are still the
	// target's: gone once the new ones are in place.
	if err := r.deleteStale(ctx, &et, et.Spec.HostName); err != nil {
		return reconcile.Result{}, err
	}
	if len(gateways) == 0 {
		return reconcile.Result{RequeueAfter: r.opts.ProbePeriod}, r.setStatus(ctx, &et, metav1.ConditionFalse, "NoGateway",
			"the local gateway has no ready endpoints (Service backbone-system/backbone-gateway)", nil, nil)
	}
	// The gateways probe the target (their connections are the ones the
	// cluster lets out); this reconciler, the one writer, reads what every
	// ready gateway found.
	v := judge(&et, r.probes.read(ctx, gateways))
	next := reconcile.Result{RequeueAfter: r.opts.ProbePeriod}
	if v.period > 0 {
		next.RequeueAfter = v.period
	}
	if v.reason == "ProbePending" {
		next.RequeueAfter = time.Second
	}
	msg := v.message
	if v.reason == "Serving" {
		msg = fmt.Sprintf("Service %s/%s, gateway port %d; %s", svc.Namespace, svc.Name, port, v.message)
	}
	return next, r.setStatus(ctx, &et, v.ready, v.reason, msg, v.alive, v.probed)
}

type conflictError struct{ msg string }

func (e *conflictError) Error() string { return e.msg }

// TargetOf is what the gateway dials for an EgressTarget.
func TargetOf(et *v1alpha1.EgressTarget) origin.Target {
	port := et.Spec.Port
	if port == 0 {
		port = 443
	}
	return origin.Target{
		Name: et.Namespace + "/" + et.Name, DNSName: et.Spec.DNSName, Port: port,
		Protocol: origin.Protocol(et.Spec.Protocol), CABundle: []byte(et.Spec.CABundle), ProbePath: et.Spec.ProbePath, Squad: et.Spec.Squad,
	}
}

// servicePort is what callers dial: plain HTTP on 80 for https targets
// (the gateway originates TLS), the target's own port otherwise.
func servicePort(et *v1alpha1.EgressTarget) corev1.ServicePort {
	switch et.Spec.Protocol {
	case v1alpha1.EgressProtocolTLS, v1alpha1.EgressProtocolTCP:
		port := et.Spec.Port
		if port == 0 {
			port = 443
		}
		return corev1.ServicePort{Name: string(et.Spec.Protocol), Protocol: corev1.ProtocolTCP, Port: port}
	default:
		return corev1.ServicePort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, AppProtocol: ptr.To("http")}
	}
}

func (r *EgressReconciler) service(ctx context.Context, et *v1alpha1.EgressTarget, port int32, gw mirror.Gateway) (*corev1.Service, error) {
	want := servicePort(et)
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: et.Namespace, Name: et.Spec.HostName}}
	var existing corev1.Service
	err := r.client.Get(ctx, client.ObjectKeyFromObject(svc), &existing)
	if err == nil && !metav1.IsControlledBy(&existing, et) {
		return nil, &conflictError{fmt.Sprintf("Service %s/%s exists and is not this target's; rename the target or remove the Service", existing.Namespace, existing.Name)}
	}
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, err
	}
	if err == nil && gw.Misfits(&existing) {
		// Of another family than the gateway's (made before its family was
		// set, or before the gateway's changed): the first family cannot
		// change, so it is made anew.
		if err := r.client.Delete(ctx, &existing, client.Preconditions{UID: &existing.UID}); client.IgnoreNotFound(err) != nil {
			return nil, err
		}
	}
	_, err = controllerutil.CreateOrUpdate(ctx, r.client, svc, func() error {
		labels := map[string]string{
			v1alpha1.ExportedLabel:  "true",
			EgressTargetLabel:       et.Name,
			v1alpha1.ManagedByLabel: v1alpha1.ManagedByValue,
			v1alpha1.SquadLabel:     et.Spec.Squad,
		}
		if svc.Labels == nil {
			svc.Labels = map[string]string{}
		}
		maps.Copy(svc.Labels, labels)
		if svc.Annotations == nil {
			svc.Annotations = map[string]string{}
		}
		svc.Annotations[EgressPortAnnotation] = strconv.Itoa(int(port))
		svc.Spec.Type = corev1.ServiceTypeClusterIP
		svc.Spec.Selector = nil
		// The gateway's family whatever the cluster's first one: the slice
		// holds the gateway's addresses, and kube-proxy sends a cluster IP
		// only to endpoints of its own family. Unknown (no gateway
		// Service yet): the cluster's default, and an existing Service's
		// families stay.
		if families, policy := gw.ServiceFamilies(); families != nil {
			svc.Spec.IPFamilies, svc.Spec.IPFamilyPolicy = families, policy
		}
		if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Name != want.Name || svc.Spec.Ports[0].Port != want.Port ||
			!ptr.Equal(svc.Spec.Ports[0].AppProtocol, want.AppProtocol) {
			svc.Spec.Ports = []corev1.ServicePort{want}
		}
		return controllerutil.SetControllerReference(et, svc, r.client.Scheme())
	})
	return svc, err
}

func (r *EgressReconciler) slice(ctx context.Context, et *v1alpha1.EgressTarget, svc *corev1.Service, port int32, gw mirror.Gateway) error {
	sp := servicePort(et)
	sl := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: et.Namespace, Name: et.Spec.HostName + "-egress"}}
	var existing discoveryv1.EndpointSlice
	var cur *discoveryv1.EndpointSlice
	err := r.client.Get(ctx, client.ObjectKeyFromObject(sl), &existing)
	if err == nil {
		cur = &existing
	}
	addressType, addrs := gw.SliceFor(cur)
	switch {
	case err == nil && existing.AddressType != addressType && metav1.IsControlledBy(&existing, et):
		// The address type is immutable: a slice of the gateway's former
		// family is made anew.
		if err := r.client.Delete(ctx, &existing, client.Preconditions{UID: &existing.UID}); client.IgnoreNotFound(err) != nil {
			return err
		}
	case err != nil && !apierrors.IsNotFound(err):
		return err
	}
	_, err = controllerutil.CreateOrUpdate(ctx, r.client, sl, func() error {
		if sl.Labels == nil {
			sl.Labels = map[string]string{}
		}
		sl.Labels[discoveryv1.LabelServiceName] = svc.Name
		sl.Labels[discoveryv1.LabelManagedBy] = v1alpha1.EndpointSliceManagedBy
		sl.Labels[v1alpha1.ManagedByLabel] = v1alpha1.ManagedByValue
		sl.AddressType = addressType
		want := []discoveryv1.Endpoint{}
		for _, a := range addrs {
			want = append(want, discoveryv1.Endpoint{Addresses: []string{a}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
		}
		if !slices.EqualFunc(sl.Endpoints, want, func(a, b discoveryv1.Endpoint) bool {
			return slices.Equal(a.Addresses, b.Addresses) && ptr.Equal(a.Conditions.Ready, b.Conditions.Ready)
		}) {
			sl.Endpoints = want
		}
		wantPort := discoveryv1.EndpointPort{Name: ptr.To(sp.Name), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To(port), AppProtocol: sp.AppProtocol}
		if len(sl.Ports) != 1 || !ptr.Equal(sl.Ports[0].Name, wantPort.Name) || !ptr.Equal(sl.Ports[0].Port, wantPort.Port) {
			sl.Ports = []discoveryv1.EndpointPort{wantPort}
		}
		return controllerutil.SetControllerReference(et, sl, r.client.Scheme())
	})
	return err
}

// deleteStale removes the Services and EndpointSlices the target controls
// other than those of hostName (all of them for ""): those of a hostName
// it had before, or of when its environment was this cluster. They are
// found by owner reference, not by name: the name they were made under is
// no longer in the spec.
func (r *EgressReconciler) deleteStale(ctx context.Context, et *v1alpha1.EgressTarget, hostName string) error {
	var svcs corev1.ServiceList
	if err := r.client.List(ctx, &svcs, client.InNamespace(et.Namespace), client.HasLabels{EgressTargetLabel}); err != nil {
		return err
	}
	type staleObject struct {
		kind string
		obj  client.Object
	}
	var stale []staleObject
	for i := range svcs.Items {
		if s := &svcs.Items[i]; metav1.IsControlledBy(s, et) && (hostName == "" || s.Name != hostName) {
			stale = append(stale, staleObject{"Service", s})
		}
	}
	var sls discoveryv1.EndpointSliceList
	if err := r.client.List(ctx, &sls, client.InNamespace(et.Namespace),
		client.MatchingLabels{discoveryv1.LabelManagedBy: v1alpha1.EndpointSliceManagedBy}); err != nil {
		return err
	}
	for i := range sls.Items {
		if sl := &sls.Items[i]; metav1.IsControlledBy(sl, et) && (hostName == "" || sl.Name != hostName+"-egress") {
			stale = append(stale, staleObject{"EndpointSlice", sl})
		}
	}
	for _, s := range stale {
		uid := s.obj.GetUID()
		if err := r.client.Delete(ctx, s.obj, client.Preconditions{UID: &uid}); client.IgnoreNotFound(err) != nil {
			return err
		}
		r.opts.Log.Info("removed an object the egress target no longer needs", "target", et.Namespace+"/"+et.Name,
			"kind", s.kind, "name", s.obj.GetName())
	}
	return nil
}

// setStatus writes the Ready condition (and the probe's verdict, alive
// and the time of the probe it rests on) when it changed, or when the
// recorded probe time is a minute behind.
func (r *EgressReconciler) setStatus(ctx context.Context, et *v1alpha1.EgressTarget, st metav1.ConditionStatus, reason, msg string, alive *bool, probeTime *metav1.Time) error {
	cur := meta.FindStatusCondition(et.Status.Conditions, v1alpha1.ConditionReady)
	stale := probeTime != nil && (et.Status.LastProbeTime == nil || probeTime.Sub(et.Status.LastProbeTime.Time) > time.Minute)
	// Serving's message carries latencies, and a probe failing from one
	// gateway may fail with a new port number each time: neither is worth
	// a write on its own.
	if cur != nil && cur.Status == st && cur.Reason == reason && (cur.Message == msg || reason == "Serving" || reason == "TargetUnreachable") &&
		et.Status.ObservedGeneration == et.Generation && ptr.Equal(et.Status.Alive, alive) && !stale {
		return nil
	}
	patch := client.MergeFrom(et.DeepCopy())
	meta.SetStatusCondition(&et.Status.Conditions, metav1.Condition{Type: v1alpha1.ConditionReady, Status: st, Reason: reason, Message: msg, ObservedGeneration: et.Generation})
	et.Status.ObservedGeneration = et.Generation
	et.Status.Alive = alive
	if probeTime != nil {
		et.Status.LastProbeTime = probeTime
	}
	return client.IgnoreNotFound(r.client.Status().Patch(ctx, et, patch))
}
