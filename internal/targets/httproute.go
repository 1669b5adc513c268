package targets

import (
	"context"
	"errors"
	"fmt"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
)

// IngressMode is the kind of object an IngressTarget becomes.
type IngressMode string

const (
	// IngressModeIngress makes a networking.k8s.io/v1 Ingress.
	IngressModeIngress IngressMode = "ingress"
	// IngressModeHTTPRoute makes a gateway.networking.k8s.io/v1 HTTPRoute
	// attached to the configured Gateway.
	IngressModeHTTPRoute IngressMode = "httproute"
)

// ParseIngressMode accepts "ingress" or "httproute".
func ParseIngressMode(s string) (IngressMode, error) {
	switch m := IngressMode(s); m {
	case IngressModeIngress, IngressModeHTTPRoute:
		return m, nil
	}
	return "", fmt.Errorf("ingress mode %q: want ingress or httproute", s)
}

// GatewayRef names the Gateway HTTPRoutes attach to, and optionally one of
// its listeners.
type GatewayRef struct {
	Namespace, Name, SectionName string
}

func (g GatewayRef) String() string {
	s := g.Namespace + "/" + g.Name
	if g.SectionName != "" {
		s += "/" + g.SectionName
	}
	return s
}

// ParseGatewayRef reads namespace/name[/sectionName].
func ParseGatewayRef(s string) (GatewayRef, error) {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 {
		return GatewayRef{}, fmt.Errorf("gateway %q: want namespace/name or namespace/name/sectionName", s)
	}
	g := GatewayRef{Namespace: parts[0], Name: parts[1]}
	if len(parts) == 3 {
		g.SectionName = parts[2]
	}
	if errs := validation.IsDNS1123Label(g.Namespace); len(errs) > 0 {
		return GatewayRef{}, fmt.Errorf("gateway %q: namespace: %s", s, strings.Join(errs, "; "))
	}
	if errs := validation.IsDNS1123Subdomain(g.Name); len(errs) > 0 {
		return GatewayRef{}, fmt.Errorf("gateway %q: name: %s", s, strings.Join(errs, "; "))
	}
	if g.SectionName != "" {
		if errs := validation.IsDNS1123Subdomain(g.SectionName); len(errs) > 0 {
			return GatewayRef{}, fmt.Errorf("gateway %q: section name: %s", s, strings.Join(errs, "; "))
		}
	}
	return g, nil
}

// HTTPRouteFor is the HTTPRoute of an IngressTarget: the host, on the
// configured Gateway (and listener), to the Service's port. Every field the
// API server would default is set, so an unchanged route compares equal
// and is not rewritten. Only the external-dns hostname annotations are
// set: the Gateway holds TLS, so there is no cert-manager annotation here.
func HTTPRouteFor(it *v1alpha1.IngressTarget, host, backend string, opts IngressOptions) *gatewayv1.HTTPRoute {
	parent := gatewayv1.ParentReference{
		Group:     ptr.To(gatewayv1.Group(gatewayv1.GroupName)),
		Kind:      ptr.To(gatewayv1.Kind("Gateway")),
		Namespace: ptr.To(gatewayv1.Namespace(opts.Gateway.Namespace)),
		Name:      gatewayv1.ObjectName(opts.Gateway.Name),
	}
	if opts.Gateway.SectionName != "" {
		parent.SectionName = ptr.To(gatewayv1.SectionName(opts.Gateway.SectionName))
	}
	return &gatewayv1.HTTPRoute{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: it.Spec.Namespace, Name: it.Name,
			Labels:      ownLabels(it),
			Annotations: dnsAnnotations(host),
		},
		Spec: gatewayv1.HTTPRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{parent}},
			Hostnames:       []gatewayv1.Hostname{gatewayv1.Hostname(host)},
			Rules: []gatewayv1.HTTPRouteRule{{
				Matches: []gatewayv1.HTTPRouteMatch{{Path: &gatewayv1.HTTPPathMatch{
					Type: ptr.To(gatewayv1.PathMatchPathPrefix), Value: ptr.To("/"),
				}}},
				BackendRefs: []gatewayv1.HTTPBackendRef{{BackendRef: gatewayv1.BackendRef{
					BackendObjectReference: gatewayv1.BackendObjectReference{
						Group: ptr.To(gatewayv1.Group("")),
						Kind:  ptr.To(gatewayv1.Kind("Service")),
						Name:  gatewayv1.ObjectName(backend),
						Port:  ptr.To(gatewayv1.PortNumber(it.Spec.Port)),
					},
					Weight: ptr.To[int32](1),
				}}},
			}},
		},
	}
}

// serveRoute keeps the target's HTTPRoute and reads whether its Gateway
// accepted it.
func (r *IngressReconciler) serveRoute(ctx context.Context, it *v1alpha1.IngressTarget, host, backend string) (outcome, error) {
	route := &gatewayv1.HTTPRoute{ObjectMeta: metav1.ObjectMeta{Namespace: it.Spec.Namespace, Name: it.Name}}
	var existing gatewayv1.HTTPRoute
	err := r.client.Get(ctx, client.ObjectKeyFromObject(route), &existing)
	if err == nil && existing.Labels[IngressTargetLabel] != it.Name {
		return outcome{status: metav1.ConditionFalse, reason: "RouteConflict",
			message: fmt.Sprintf("HTTPRoute %s/%s exists and is not backbone's", existing.Namespace, existing.Name)}, nil
	}
	if err != nil && !apierrors.IsNotFound(err) {
		return outcome{}, err
	}
	desired := HTTPRouteFor(it, host, backend, r.opts)
	if _, err := controllerutil.CreateOrUpdate(ctx, r.client, route, func() error {
		route.Labels, route.Annotations, route.Spec = desired.Labels, desired.Annotations, desired.Spec
		return nil
	}); err != nil {
		if apierrors.IsForbidden(err) || apierrors.IsInvalid(err) {
			return outcome{status: metav1.ConditionFalse, reason: "RouteFailed", message: err.Error()}, nil
		}
		return outcome{}, err
	}
	o := routeOutcome(route, r.opts.Gateway)
	o.written = true
	o.message = fmt.Sprintf("HTTPRoute %s/%s on Gateway %s for %s to Service %s: %s", route.Namespace, route.Name, r.opts.Gateway, host, backend, o.message)
	address, err := r.gatewayAddress(ctx)
	switch {
	case err != nil:
		o.message += fmt.Sprintf("; the Gateway's address is unknown (%v)", err)
	case address == "":
		o.message += "; the Gateway has not published an address yet"
	}
	o.address = address
	// The route's status comes through the watch; the Gateway is read,
	// not watched (get is all the controller may do), so its address is
	// re-read now and then.
	o.requeue = gatewayRecheck
	if address == "" {
		o.requeue = gatewayRecheck / 10
	}
	return o, nil
}

// routeOutcome judges a route by the status its Gateway wrote: Ready once
// the Gateway accepted this generation of the route and did not report
// its backend unresolved.
func routeOutcome(route *gatewayv1.HTTPRoute, gw GatewayRef) outcome {
	for _, p := range route.Status.Parents {
		if !sameParent(p.ParentRef, route.Namespace, gw) {
			continue
		}
		acc := meta.FindStatusCondition(p.Conditions, string(gatewayv1.RouteConditionAccepted))
		if acc == nil || acc.ObservedGeneration < route.Generation {
			break
		}
		if acc.Status != metav1.ConditionTrue {
			return outcome{status: metav1.ConditionFalse, reason: "RouteNotAccepted",
				message: fmt.Sprintf("not accepted by the Gateway (%s: %s)", acc.Reason, acc.Message)}
		}
		refs := meta.FindStatusCondition(p.Conditions, string(gatewayv1.RouteConditionResolvedRefs))
		if refs != nil && refs.Status == metav1.ConditionFalse && refs.ObservedGeneration >= route.Generation {
			return outcome{status: metav1.ConditionFalse, reason: "BackendNotResolved",
				message: fmt.Sprintf("accepted, but the Gateway cannot resolve the backend (%s: %s)", refs.Reason, refs.Message)}
		}
		return outcome{status: metav1.ConditionTrue, reason: "Serving", message: "accepted by the Gateway"}
	}
	return outcome{status: metav1.ConditionFalse, reason: "RoutePending", message: "the Gateway has not accepted the route yet"}
}

// sameParent reports whether a parentRef in a route's status names the
// configured Gateway (and listener).
func sameParent(ref gatewayv1.ParentReference, routeNamespace string, gw GatewayRef) bool {
	ns := routeNamespace
	if ref.Namespace != nil {
		ns = string(*ref.Namespace)
	}
	group, kind := gatewayv1.GroupName, "Gateway"
	if ref.Group != nil {
		group = string(*ref.Group)
	}
	if ref.Kind != nil {
		kind = string(*ref.Kind)
	}
	return group == gatewayv1.GroupName && kind == "Gateway" && ns == gw.Namespace && string(ref.Name) == gw.Name &&
		string(ptr.Deref(ref.SectionName, "")) == gw.SectionName
}

// gatewayAddress is the first address the Gateway published. The
// controller may get the Gateway (never list or watch it), so it reads it
// from the API server, not from a cache.
func (r *IngressReconciler) gatewayAddress(ctx context.Context) (string, error) {
	var gw gatewayv1.Gateway
	key := types.NamespacedName{Namespace: r.opts.Gateway.Namespace, Name: r.opts.Gateway.Name}
	if err := r.reader.Get(ctx, key, &gw); err != nil {
		if apierrors.IsNotFound(err) {
			return "", errors.New("no such Gateway")
		}
		return "", err
	}
	for _, a := range gw.Status.Addresses {
		if a.Value != "" {
			return a.Value, nil
		}
	}
	return "", nil
}
