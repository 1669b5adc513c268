package mirror

import (
	"context"
	"fmt"
	"maps"
	"slices"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/backbone-mesh/backbone/api/v1alpha1"
)

// sync reads the local state, calculates the plan and applies it.
func (r *Reconciler) sync(ctx context.Context, link *v1alpha1.Link, w *remoteWatch) (*Plan, error) {
	cluster := link.Spec.TargetClusterName
	remote, err := w.exported(ctx)
	if err != nil {
		return nil, err
	}
	in := Input{
		Cluster: cluster, Remote: remote, Alive: link.Status.Probe == nil || link.Status.Probe.Alive,
		Local: map[types.NamespacedName]*corev1.Service{}, LocalSlices: map[types.NamespacedName]*discoveryv1.EndpointSlice{},
		Namespaces: map[string]bool{}, CreateNamespaces: link.Spec.CreateNamespaces,
		ExcludedLabels: set(link.Spec.ExcludedLabels), ExcludedAnnotations: set(link.Spec.ExcludedAnnotations),
	}
	var nss corev1.NamespaceList
	if err := r.client.List(ctx, &nss); err != nil {
		return nil, err
	}
	for _, ns := range nss.Items {
		in.Namespaces[ns.Name] = true
	}
	// Local Services under the names mirrors would take (to detect
	// conflicts), and every mirror of this cluster (to delete stale ones).
	// The cache's objects are read in place, not copied: the plan copies
	// whatever it changes.
	var local corev1.ServiceList
	if err := r.client.List(ctx, &local, client.UnsafeDisableDeepCopy); err != nil {
		return nil, err
	}
	byName := make(map[types.NamespacedName]*corev1.Service, len(local.Items))
	for i := range local.Items {
		s := &local.Items[i]
		key := types.NamespacedName{Namespace: s.Namespace, Name: s.Name}
		byName[key] = s
		if s.Labels[v1alpha1.MirroredFromLabel] == cluster && s.Labels[v1alpha1.ManagedByLabel] == v1alpha1.ManagedByValue {
			in.Local[key] = s
		}
	}
	for _, rs := range remote {
		names := []string{MirrorName(rs.Service.Name, cluster)}
		for _, h := range rs.Hostnames {
			names = append(names, h+"-"+names[0])
		}
		for _, n := range names {
			key := types.NamespacedName{Namespace: rs.Service.Namespace, Name: n}
			if s, ok := byName[key]; ok {
				in.Local[key] = s
			}
		}
	}
	// Every mirror slice of every Link: the persisted port allocations.
	var slices discoveryv1.EndpointSliceList
	if err := r.client.List(ctx, &slices, client.MatchingLabels{discoveryv1.LabelManagedBy: v1alpha1.EndpointSliceManagedBy}, client.UnsafeDisableDeepCopy); err != nil {
		return nil, err
	}
	existing := map[string]int32{}
	for i := range slices.Items {
		sl := &slices.Items[i]
		if sl.Labels[v1alpha1.MirroredFromLabel] == cluster {
			in.LocalSlices[types.NamespacedName{Namespace: sl.Namespace, Name: sl.Name}] = sl
		}
		if sl.Labels[v1alpha1.HeadlessMirrorLabel] == "true" {
			continue
		}
		for _, p := range sl.Ports {
			if p.Name != nil && p.Port != nil {
				existing[PortKey(sl.Namespace, sl.Name, *p.Name)] = *p.Port
			}
		}
	}
	in.Ports = NewAllocator(r.opts.Ports, existing)
	if in.GatewayAddresses, err = GatewayAddresses(ctx, r.client); err != nil {
		return nil, err
	}
	plan := Calculate(in)
	return plan, r.apply(ctx, plan)
}

// GatewayAddresses are the ready IPv4 endpoints of the local gateway
// Service, sorted: what every mirror's (and egress target's) EndpointSlice
// points at.
func GatewayAddresses(ctx context.Context, c client.Reader) ([]string, error) {
	var list discoveryv1.EndpointSliceList
	if err := c.List(ctx, &list, client.InNamespace(v1alpha1.SystemNamespace), client.MatchingLabels{discoveryv1.LabelServiceName: v1alpha1.GatewayServiceName}); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, sl := range list.Items {
		if sl.AddressType != discoveryv1.AddressTypeIPv4 {
			continue
		}
		for _, ep := range sl.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			for _, a := range ep.Addresses {
				seen[a] = true
			}
		}
	}
	return slices.Sorted(maps.Keys(seen)), nil
}

func (r *Reconciler) write(kind, verb string, err error) error {
	if err == nil {
		r.opts.Metrics.Writes.WithLabelValues(kind, verb).Inc()
	}
	return err
}

// apply executes a plan: namespaces, then Services, then slices; deletes
// last. Within a phase the writes run in parallel (bounded); the first
// error stops the phase and the Link is retried.
func (r *Reconciler) apply(ctx context.Context, p *Plan) error {
	for _, ns := range p.Namespaces {
		err := r.client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{v1alpha1.ManagedByLabel: v1alpha1.ManagedByValue}}})
		if err := r.write("Namespace", "create", ignoreExists(err)); err != nil {
			return fmt.Errorf("creating namespace %s: %w", ns, err)
		}
	}
	phases := []func() error{
		func() error {
			return parallel(ctx, r.opts.Parallelism, p.DeleteServices, func(ctx context.Context, s *corev1.Service) error {
				s = s.DeepCopy() // the plan may hold the cache's own object
				return r.write("Service", "delete", client.IgnoreNotFound(r.client.Delete(ctx, s, client.Preconditions{UID: &s.UID})))
			})
		},
		func() error {
			return parallel(ctx, r.opts.Parallelism, p.CreateServices, func(ctx context.Context, s *corev1.Service) error {
				if err := r.write("Service", "create", r.client.Create(ctx, s)); err != nil {
					return fmt.Errorf("creating mirror %s/%s: %w", s.Namespace, s.Name, err)
				}
				return nil
			})
		},
		func() error {
			return parallel(ctx, r.opts.Parallelism, p.UpdateServices, func(ctx context.Context, s *corev1.Service) error {
				if err := r.write("Service", "update", r.client.Update(ctx, s)); err != nil {
					return fmt.Errorf("updating mirror %s/%s: %w", s.Namespace, s.Name, err)
				}
				return nil
			})
		},
		func() error {
			return parallel(ctx, r.opts.Parallelism, p.CreateSlices, func(ctx context.Context, s *discoveryv1.EndpointSlice) error {
				if err := r.write("EndpointSlice", "create", r.client.Create(ctx, s)); err != nil {
					return fmt.Errorf("creating EndpointSlice %s/%s: %w", s.Namespace, s.Name, err)
				}
				return nil
			})
		},
		func() error {
			return parallel(ctx, r.opts.Parallelism, p.UpdateSlices, func(ctx context.Context, s *discoveryv1.EndpointSlice) error {
				if err := r.write("EndpointSlice", "update", r.client.Update(ctx, s)); err != nil {
					return fmt.Errorf("updating EndpointSlice %s/%s: %w", s.Namespace, s.Name, err)
				}
				return nil
			})
		},
		func() error {
			return parallel(ctx, r.opts.Parallelism, p.DeleteSlices, func(ctx context.Context, s *discoveryv1.EndpointSlice) error {
				s = s.DeepCopy() // the plan may hold the cache's own object
				return r.write("EndpointSlice", "delete", client.IgnoreNotFound(r.client.Delete(ctx, s)))
			})
		},
	}
	for _, phase := range phases {
		if err := phase(); err != nil {
			return err
		}
	}
	return nil
}

// parallel runs f on every item with at most n in flight.
func parallel[T any](ctx context.Context, n int, items []T, f func(context.Context, T) error) error {
	if len(items) == 0 {
		return nil
	}
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(n)
	for _, it := range items {
		g.Go(func() error { return f(ctx, it) })
	}
	return g.Wait()
}

func ignoreExists(err error) error {
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// finalize deletes the Link's mirrors, then lets the Link go.
func (r *Reconciler) finalize(ctx context.Context, link *v1alpha1.Link) error {
	r.stopWatch(types.NamespacedName{Namespace: link.Namespace, Name: link.Name})
	cluster := link.Spec.TargetClusterName
	sel := client.MatchingLabels{v1alpha1.MirroredFromLabel: cluster}
	var svcs corev1.ServiceList
	if err := r.client.List(ctx, &svcs, sel); err != nil {
		return err
	}
	for i := range svcs.Items {
		s := &svcs.Items[i]
		if !owned(s, cluster) {
			continue
		}
		if err := r.write("Service", "delete", client.IgnoreNotFound(r.client.Delete(ctx, s))); err != nil {
			return err
		}
	}
	var slices discoveryv1.EndpointSliceList
	if err := r.client.List(ctx, &slices, sel, client.MatchingLabels{discoveryv1.LabelManagedBy: v1alpha1.EndpointSliceManagedBy}); err != nil {
		return err
	}
	for i := range slices.Items {
		if err := r.write("EndpointSlice", "delete", client.IgnoreNotFound(r.client.Delete(ctx, &slices.Items[i]))); err != nil {
			return err
		}
	}
	r.opts.Metrics.Mirrored.DeleteLabelValues(cluster)
	r.opts.Metrics.RemoteUp.DeleteLabelValues(cluster)
	if controllerutil.RemoveFinalizer(link, Finalizer) {
		return r.write("Link", "update", r.client.Update(ctx, link))
	}
	return nil
}

func set(xs []string) map[string]bool {
	m := make(map[string]bool, len(xs))
	for _, x := range xs {
		m[x] = true
	}
	return m
}
